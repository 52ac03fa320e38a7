"""``python -m services.order``: the order service process.

Its calls to user, inventory, payment and shipping go through the process's mesh channels
(Consul-discovered and balanced when CONSUL_HTTP_ADDR is set, the configured static targets
otherwise), authenticated as the order service itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mesh.identity import ServiceTokens
from mesh.server import HostedService
from services.common.app import ServiceContext, main
from services.order.clients import Upstreams
from services.order.orders import Orders
from services.order.servicer import OrderServicer
from services.order.store import OrderStore
from shop.order.v1 import order_pb2, order_pb2_grpc

SERVICE = order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"


async def build(context: ServiceContext) -> Sequence[HostedService]:
    settings = context.settings
    tokens = ServiceTokens(settings.jwt, settings.name)
    upstreams = Upstreams.connect(settings.upstreams, tokens, factory=context.channel)
    servicer = OrderServicer(Orders(OrderStore(context.database)), upstreams, context.auth)
    return [
        HostedService(
            SERVICE, lambda server: order_pb2_grpc.add_OrderServiceServicer_to_server(servicer, server)
        )
    ]


if __name__ == "__main__":
    main("order", MIGRATIONS, build)
