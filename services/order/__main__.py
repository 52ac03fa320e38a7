"""``python -m services.order``: the order service process.

The shared start-up (:func:`services.common.app.run`) has no shutdown hook, so the upstream
channels opened in ``build`` are closed here once the server has stopped and drained.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

from mesh.identity import ServiceTokens
from mesh.server import HostedService
from mesh.telemetry.logs import configure_logging
from services.common.app import run
from services.common.auth import Authenticator
from services.common.database import Database
from services.common.settings import ServiceSettings, service_settings_from_env
from services.order.clients import Upstreams
from services.order.orders import Orders
from services.order.servicer import OrderServicer
from services.order.store import OrderStore
from shop.order.v1 import order_pb2, order_pb2_grpc

SERVICE = order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"


async def serve_order(settings: ServiceSettings) -> None:
    """Serve until signalled; the upstream channels outlive every in-flight call, then close."""
    opened: list[Upstreams] = []

    async def build(
        settings: ServiceSettings, database: Database, auth: Authenticator
    ) -> Sequence[HostedService]:
        upstreams = Upstreams.connect(settings.upstreams, ServiceTokens(settings.jwt, settings.name))
        opened.append(upstreams)
        servicer = OrderServicer(Orders(OrderStore(database)), upstreams, auth)
        return [
            HostedService(
                SERVICE, lambda server: order_pb2_grpc.add_OrderServiceServicer_to_server(servicer, server)
            )
        ]

    try:
        await run(settings, MIGRATIONS, build)
    finally:
        for upstreams in opened:
            await upstreams.close()


def main() -> None:
    settings = service_settings_from_env("order", os.environ)
    configure_logging("order", settings.log_level)
    asyncio.run(serve_order(settings))


if __name__ == "__main__":
    main()
