"""The inventory service as a real process, called through the generated stubs."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shop.inventory.v1 import inventory_pb2 as pb
from shop.inventory.v1 import inventory_pb2_grpc
from tests.conftest import StartService
from tests.support.tokens import KeyPair


async def test_catalog_reservations_and_errors(start_service: StartService, jwt_keys: KeyPair) -> None:
    service = start_service("inventory", INVENTORY_SEED_DEMO="1")
    customer = jwt_keys.metadata("u-1")
    order_service = jwt_keys.service_metadata("order")
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        listed = await stub.ListProducts(pb.ListProductsRequest(page_size=2))
        assert len(listed.products) == 2 and listed.next_page_token
        rest = await stub.ListProducts(
            pb.ListProductsRequest(page_size=100, page_token=listed.next_page_token)
        )
        assert len(rest.products) == 3
        assert listed.products[0].price.currency_code == "EUR"

        reserved = await stub.ReserveStock(
            pb.ReserveStockRequest(
                reservation_id="r-1", order_id="o-1", items=[pb.StockItem(sku="CUP-KYUSU", quantity=2)]
            ),
            metadata=order_service,
        )
        assert reserved.reservation.state == pb.RESERVATION_STATE_HELD
        product = await stub.GetProduct(pb.GetProductRequest(sku="CUP-KYUSU"))
        assert product.product.stock == 18

        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.ReserveStock(
                pb.ReserveStockRequest(reservation_id="r-2", items=[]), metadata=order_service
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = rpc_status.from_call(bad.value)
        assert status is not None
        violations = error_details_pb2.BadRequest()
        assert status.details[0].Unpack(violations)
        assert {v.field for v in violations.field_violations} == {"order_id", "items"}

        with pytest.raises(grpc.aio.AioRpcError) as short:
            await stub.ReserveStock(
                pb.ReserveStockRequest(
                    reservation_id="r-3", order_id="o-3", items=[pb.StockItem(sku="CUP-KYUSU", quantity=99)]
                ),
                metadata=order_service,
            )
        assert short.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "insufficient stock for 'CUP-KYUSU'" in (short.value.details() or "")

        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetProduct(pb.GetProductRequest(sku="NOPE"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

        with pytest.raises(grpc.aio.AioRpcError) as customer_reserves:
            await stub.ReserveStock(
                pb.ReserveStockRequest(
                    reservation_id="r-9", order_id="o-9", items=[pb.StockItem(sku="CUP-KYUSU", quantity=1)]
                ),
                metadata=customer,
            )
        assert customer_reserves.value.code() == grpc.StatusCode.PERMISSION_DENIED

        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.ReleaseStock(pb.ReleaseStockRequest(reservation_id="r-1"))
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # Only the trusted callers (MESH_TRUSTED_CALLERS, default order) act as the shop: the
        # gateway's or another service's identity without a user token is anonymous.
        for caller in ("gateway", "shipping"):
            with pytest.raises(grpc.aio.AioRpcError) as untrusted:
                await stub.ReleaseStock(
                    pb.ReleaseStockRequest(reservation_id="r-1"), metadata=jwt_keys.service_metadata(caller)
                )
            assert untrusted.value.code() == grpc.StatusCode.UNAUTHENTICATED, caller
        # A token claiming the service role is refused whoever signed it.
        with pytest.raises(grpc.aio.AioRpcError) as claimed:
            await stub.ReleaseStock(
                pb.ReleaseStockRequest(reservation_id="r-1"),
                metadata=jwt_keys.metadata("service:order", ("service",)),
            )
        assert claimed.value.code() == grpc.StatusCode.UNAUTHENTICATED

        with pytest.raises(grpc.aio.AioRpcError) as not_admin:
            await stub.RestockProduct(
                pb.RestockProductRequest(sku="CUP-KYUSU", quantity=5), metadata=customer
            )
        assert not_admin.value.code() == grpc.StatusCode.PERMISSION_DENIED
        admin = jwt_keys.metadata("admin-1", ("admin",))
        restocked = await stub.RestockProduct(
            pb.RestockProductRequest(sku="CUP-KYUSU", quantity=5, request_id="q1"), metadata=admin
        )
        assert restocked.product.stock == 23


async def test_concurrent_reservations_through_two_instances_never_oversell(
    start_service: StartService, jwt_keys: KeyPair, postgres_dsn: str
) -> None:
    """Two instances on one PostgreSQL database, 200 concurrent one-unit reservations of 20 units."""
    first = start_service("inventory", INVENTORY_DATABASE_URL=postgres_dsn, INVENTORY_SEED_DEMO="1")
    second = start_service("inventory", INVENTORY_DATABASE_URL=postgres_dsn)
    customer = jwt_keys.service_metadata("order")
    async with grpc.aio.insecure_channel(first.address) as a, grpc.aio.insecure_channel(second.address) as b:
        stubs = [inventory_pb2_grpc.InventoryServiceStub(a), inventory_pb2_grpc.InventoryServiceStub(b)]

        async def attempt(n: int) -> bool:
            request = pb.ReserveStockRequest(
                reservation_id=f"r-{n}", order_id=f"o-{n}", items=[pb.StockItem(sku="CUP-KYUSU", quantity=1)]
            )
            try:
                await stubs[n % 2].ReserveStock(request, metadata=customer, timeout=30)
                return True
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
                return False

        results = await asyncio.gather(*(attempt(n) for n in range(200)))
        assert sum(results) == 20
        product = await stubs[0].GetProduct(pb.GetProductRequest(sku="CUP-KYUSU"))
        assert product.product.stock == 0
