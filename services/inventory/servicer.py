"""InventoryService over gRPC: proto in, domain and store, proto out; nothing more."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.auth import Authenticator
from services.common.values import decode_page_token, encode_page_token, money, page_size, timestamp
from services.inventory import domain
from services.inventory.store import InventoryStore, ProductRecord, ReservationRecord
from shop.inventory.v1 import inventory_pb2 as pb
from shop.inventory.v1 import inventory_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def product_pb(record: ProductRecord) -> pb.Product:
    return pb.Product(
        sku=record.sku,
        name=record.name,
        price=money(record.price_minor, record.currency),
        stock=record.stock,
        update_time=timestamp(record.update_time),
    )


def reservation_pb(record: ReservationRecord) -> pb.Reservation:
    return pb.Reservation(
        reservation_id=record.reservation_id,
        order_id=record.order_id,
        items=[pb.StockItem(sku=line.sku, quantity=line.quantity) for line in record.items],
        state=pb.ReservationState.Value(f"RESERVATION_STATE_{record.state.value}"),
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
    )


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, store: InventoryStore, auth: Authenticator) -> None:
        self._store = store
        self._auth = auth

    async def ListProducts(
        self, request: pb.ListProductsRequest, context: Context
    ) -> pb.ListProductsResponse:
        limit = page_size(request.page_size)
        records = await self._store.list_products(decode_page_token(request.page_token), limit + 1)
        more = len(records) > limit
        records = records[:limit]
        token = encode_page_token(records[-1].sku) if more else ""
        return pb.ListProductsResponse(products=[product_pb(r) for r in records], next_page_token=token)

    async def GetProduct(self, request: pb.GetProductRequest, context: Context) -> pb.GetProductResponse:
        return pb.GetProductResponse(product=product_pb(await self._store.get_product(request.sku)))

    async def RestockProduct(
        self, request: pb.RestockProductRequest, context: Context
    ) -> pb.RestockProductResponse:
        self._auth.admin(context)
        domain.validate_restock(request.sku, request.quantity)
        record = await self._store.restock(request.sku, request.quantity, request.request_id)
        return pb.RestockProductResponse(product=product_pb(record))

    async def ReserveStock(
        self, request: pb.ReserveStockRequest, context: Context
    ) -> pb.ReserveStockResponse:
        self._auth.service(context)
        lines = domain.validate_reservation(
            request.reservation_id,
            request.order_id,
            [domain.Line(item.sku, item.quantity) for item in request.items],
        )
        record = await self._store.reserve(request.reservation_id, request.order_id, lines)
        return pb.ReserveStockResponse(reservation=reservation_pb(record))

    async def ReleaseStock(
        self, request: pb.ReleaseStockRequest, context: Context
    ) -> pb.ReleaseStockResponse:
        self._auth.service(context)
        domain.validate_reservation_id(request.reservation_id)
        record = await self._store.release(request.reservation_id)
        return pb.ReleaseStockResponse(reservation=reservation_pb(record) if record else None)

    async def CommitStock(self, request: pb.CommitStockRequest, context: Context) -> pb.CommitStockResponse:
        self._auth.service(context)
        domain.validate_reservation_id(request.reservation_id)
        record = await self._store.commit(request.reservation_id)
        return pb.CommitStockResponse(reservation=reservation_pb(record))

    async def GetReservation(
        self, request: pb.GetReservationRequest, context: Context
    ) -> pb.GetReservationResponse:
        self._auth.service(context)
        domain.validate_reservation_id(request.reservation_id)
        record = await self._store.get_reservation(request.reservation_id)
        return pb.GetReservationResponse(reservation=reservation_pb(record))
