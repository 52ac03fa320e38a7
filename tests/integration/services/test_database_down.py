"""A service whose database goes away answers UNAVAILABLE naming it, and recovers after."""

from __future__ import annotations

import asyncio

import grpc
import psycopg
import pytest

from shop.inventory.v1 import inventory_pb2 as pb
from shop.inventory.v1 import inventory_pb2_grpc
from tests.conftest import POSTGRES_ADMIN_DSN, StartService


def set_reachable(dsn: str, reachable: bool) -> None:
    """Allow or refuse connections to the test's own database, dropping the open ones."""
    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if reachable else "false"}')
        if not reachable:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


async def test_database_down_is_unavailable_naming_it(start_service: StartService, postgres_dsn: str) -> None:
    service = start_service("inventory", INVENTORY_DATABASE_URL=postgres_dsn, INVENTORY_SEED_DEMO="1")
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        assert (await stub.GetProduct(pb.GetProductRequest(sku="TEA-SENCHA"))).product.stock == 100
        set_reachable(postgres_dsn, False)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await stub.GetProduct(pb.GetProductRequest(sku="TEA-SENCHA"), timeout=10)
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "inventory database (postgresql) is unavailable" in (down.value.details() or "")
            assert "postgres@" not in (down.value.details() or "")  # never leak the DSN
        finally:
            set_reachable(postgres_dsn, True)
        # Every worker's connection died; each must reconnect without failing a call.
        replies = await asyncio.gather(
            *(stub.GetProduct(pb.GetProductRequest(sku="TEA-SENCHA")) for _ in range(16))
        )
        assert [r.product.stock for r in replies] == [100] * 16
