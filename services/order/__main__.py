"""``python -m services.order``: the order service process.

Its calls to user, inventory, payment and shipping go through the process's mesh channels
(Consul-discovered and balanced when CONSUL_HTTP_ADDR is set, the configured static targets
otherwise), authenticated as the order service itself.

On start it resumes, in the background and as the order service, every saga left open by a
previous run (or by a dead instance, once its lease expires). Settings of its own:
``ORDER_SAGA_LEASE_SECONDS`` (10), ``ORDER_SAGA_RETRY_BASE_SECONDS`` (0.2),
``ORDER_SAGA_RETRY_MAX_SECONDS`` (30), and ``ORDER_FAULT_CRASH_AT`` for the crash tests only.

Order events are written to the outbox with each order change; unless the bus is off
(``SHOP_AMQP_URL=none``: events simply wait in the outbox), the outbox relay runs in this
process and publishes them to RabbitMQ (:mod:`services.common.messaging.relay`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mesh.identity import ServiceTokens
from mesh.server import HostedService
from services.common.app import ServiceContext, main
from services.common.database import Database
from services.common.messaging.relay import OutboxRelay
from services.order.clients import Upstreams
from services.order.domain import ORDER_STEPS
from services.order.faults import checkpoint_from_settings
from services.order.orders import Orders
from services.order.runner import saga_settings_from_extra
from services.order.servicer import OrderServicer
from services.order.store import OrderStore
from shop.order.v1 import order_pb2, order_pb2_grpc

SERVICE = order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"


async def build(context: ServiceContext) -> Sequence[HostedService]:
    settings = context.settings
    # Both are validated before anything starts: a bad value stops the process here.
    saga = saga_settings_from_extra(settings.extra)
    checkpoint = checkpoint_from_settings(settings.extra, ORDER_STEPS)
    tokens = ServiceTokens(settings.jwt, settings.name)
    upstreams = Upstreams.connect(settings.upstreams, tokens, factory=context.channel)
    relay = None
    if settings.messaging.enabled:
        relay_database = context.database
        if relay_database.dialect == "postgresql":
            # Its own connection and thread: under load its claims and marks would otherwise queue
            # behind the sagas' transactions in the shared pool (bench/orders.py: relay lag p99
            # 7.0 s -> 1.1 s). Not on SQLite: one writer at a time anyway, and a second
            # connection would only contend for the lock through the busy handler's sleeps.
            relay_database = Database(context.database.name, context.database.url, workers=1)
            context.resources.push_async_callback(relay_database.close)
        relay = OutboxRelay(relay_database, settings.messaging, registry=context.registry)
        relay.start()
        context.resources.push_async_callback(relay.close)  # before its database closes
    store = OrderStore(context.database, on_event=relay.wake if relay is not None else None)
    orders = Orders(store, saga=saga, checkpoint=checkpoint)
    context.resources.push_async_callback(orders.close)  # before the channels it calls through
    orders.start_resuming(upstreams.for_service)
    servicer = OrderServicer(orders, upstreams, context.auth)
    return [
        HostedService(
            SERVICE, lambda server: order_pb2_grpc.add_OrderServiceServicer_to_server(servicer, server)
        )
    ]


if __name__ == "__main__":
    main("order", MIGRATIONS, build)
