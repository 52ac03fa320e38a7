"""``python -m services.inventory``: the inventory service process."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mesh.server import HostedService
from services.common.app import ServiceContext, main
from services.inventory.catalog import DEMO_CATALOG
from services.inventory.servicer import InventoryServicer
from services.inventory.store import InventoryStore
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

SERVICE = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name


async def build(context: ServiceContext) -> Sequence[HostedService]:
    settings, database, auth = context.settings, context.database, context.auth
    store = InventoryStore(database)
    if settings.extra.get("SEED_DEMO", "") == "1":
        await store.seed(DEMO_CATALOG)
    servicer = InventoryServicer(store, auth)
    return [
        HostedService(
            SERVICE,
            lambda server: inventory_pb2_grpc.add_InventoryServiceServicer_to_server(servicer, server),
        )
    ]


if __name__ == "__main__":
    main("inventory", Path(__file__).parent / "migrations", build)
