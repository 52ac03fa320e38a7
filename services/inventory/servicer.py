"""InventoryService over gRPC: proto in, domain and store, proto out; nothing more."""

from __future__ import annotations

from services.common.auth import Authenticator
from services.common.context import Context
from services.common.idempotency import RequestKey
from services.common.pagination import page, page_request
from services.common.values import money, timestamp
from services.inventory import domain
from services.inventory.store import InventoryStore, ProductRecord, ReservationRecord
from shop.inventory.v1 import inventory_pb2 as pb
from shop.inventory.v1 import inventory_pb2_grpc

# The proto enum of each state; a table because Value(name) is typed int, not the enum.
STATES = {
    domain.ReservationState.HELD: pb.RESERVATION_STATE_HELD,
    domain.ReservationState.COMMITTED: pb.RESERVATION_STATE_COMMITTED,
    domain.ReservationState.RELEASED: pb.RESERVATION_STATE_RELEASED,
}


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
        state=STATES[record.state],
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
    )


class InventoryServicer(inventory_pb2_grpc.InventoryServiceServicer):  # type: ignore[misc]  # generated grpc code is untyped (Any) for mypy
    def __init__(self, store: InventoryStore, auth: Authenticator) -> None:
        self._store = store
        self._auth = auth

    async def ListProducts(
        self, request: pb.ListProductsRequest, context: Context
    ) -> pb.ListProductsResponse:
        wanted = page_request(request.page_size, request.page_token)
        rows = await self._store.list_products(wanted.after, wanted.fetch)
        records, token = page(rows, wanted, lambda r: r.sku)
        return pb.ListProductsResponse(products=[product_pb(r) for r in records], next_page_token=token)

    async def GetProduct(self, request: pb.GetProductRequest, context: Context) -> pb.GetProductResponse:
        domain.validate_sku(request.sku)
        return pb.GetProductResponse(product=product_pb(await self._store.get_product(request.sku)))

    async def RestockProduct(
        self, request: pb.RestockProductRequest, context: Context
    ) -> pb.RestockProductResponse:
        self._auth.admin(context)
        domain.validate_restock(request.sku, request.quantity, request.request_id)
        record = await self._store.restock(request.sku, request.quantity, request.request_id)
        return pb.RestockProductResponse(product=product_pb(record))

    async def ReserveStock(
        self, request: pb.ReserveStockRequest, context: Context
    ) -> pb.ReserveStockResponse:
        caller = self._auth.service(context)
        lines = domain.validate_reservation(
            request.reservation_id,
            request.order_id,
            [domain.Line(item.sku, item.quantity) for item in request.items],
            request.request_id,
        )
        key = RequestKey.of(
            "ReserveStock",
            caller.subject,
            request.request_id,
            request.reservation_id,
            request.order_id,
            [[line.sku, line.quantity] for line in lines],
        )
        record = await self._store.reserve(request.reservation_id, request.order_id, lines, key)
        return pb.ReserveStockResponse(reservation=reservation_pb(record))

    async def ReleaseStock(
        self, request: pb.ReleaseStockRequest, context: Context
    ) -> pb.ReleaseStockResponse:
        caller = self._auth.service(context)
        domain.validate_reservation_id(request.reservation_id, request.request_id)
        key = RequestKey.of("ReleaseStock", caller.subject, request.request_id, request.reservation_id)
        record = await self._store.release(request.reservation_id, key)
        return pb.ReleaseStockResponse(reservation=reservation_pb(record) if record else None)

    async def CommitStock(self, request: pb.CommitStockRequest, context: Context) -> pb.CommitStockResponse:
        caller = self._auth.service(context)
        domain.validate_reservation_id(request.reservation_id, request.request_id)
        key = RequestKey.of("CommitStock", caller.subject, request.request_id, request.reservation_id)
        record = await self._store.commit(request.reservation_id, key)
        return pb.CommitStockResponse(reservation=reservation_pb(record))

    async def GetReservation(
        self, request: pb.GetReservationRequest, context: Context
    ) -> pb.GetReservationResponse:
        self._auth.service(context)
        domain.validate_reservation_id(request.reservation_id)
        record = await self._store.get_reservation(request.reservation_id)
        return pb.GetReservationResponse(reservation=reservation_pb(record))
