"""``python -m services.inventory``: the inventory service process."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

from mesh.server import HostedService
from services.common.app import ServiceContext, main
from services.inventory.catalog import DEMO_CATALOG
from services.inventory.servicer import InventoryServicer
from services.inventory.settings import InventorySettings, inventory_settings_from_env
from services.inventory.store import InventoryStore
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

SERVICE = inventory_pb2.DESCRIPTOR.services_by_name["InventoryService"].full_name


async def build(context: ServiceContext, own: InventorySettings) -> Sequence[HostedService]:
    store = InventoryStore(context.database)
    if own.seed_demo:
        await store.seed(DEMO_CATALOG)
    servicer = InventoryServicer(store, context.auth)
    return [
        HostedService(
            SERVICE,
            lambda server: inventory_pb2_grpc.add_InventoryServiceServicer_to_server(servicer, server),
        )
    ]


if __name__ == "__main__":
    own = inventory_settings_from_env(os.environ)  # first: a bad value stops the process here
    main("inventory", Path(__file__).parent / "migrations", functools.partial(build, own=own))
