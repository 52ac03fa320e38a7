"""``python -m services.order``: the order service process.

Its calls to user, inventory, payment and shipping go through the process's mesh channels
(Consul-discovered and balanced when CONSUL_HTTP_ADDR is set, the configured static targets
otherwise), as the order service itself: its mesh identity (mTLS), never a token, so the
participants' trusted callers (``MESH_TRUSTED_CALLERS``, default ``order``) recognise it.

Its saga runner feeds the ``shop_saga_*`` metrics (:mod:`services.order.saga.metrics`),
served with the mesh's on the metrics port. On start it resumes, in the background and as the
order service, every saga left open by a previous run (or by a dead instance, once its lease
expires). Its own settings (the saga lease and retry backoff, crash injection) are
:class:`~services.order.settings.OrderSettings`.

Its calls to the participants get a built-in policy (:data:`UPSTREAM_POLICY`) below whatever
MESH_POLICY_FILE and MESH_POLICY__* set: each attempt 1.5 s, 3 attempts, UNAVAILABLE and
DEADLINE_EXCEEDED retried. Saga steps carry their request_id key and the two lookups
(GetUser, GetProduct) are reads, so all may repeat: a hung participant instance costs a step
one attempt, not the order (the step's budget is MESH_DEFAULT_TIMEOUT_SECONDS, 5 s).

Order events are written to the outbox with each order change; unless the bus is off
(``SHOP_AMQP_URL=none``: events simply wait in the outbox), the outbox relay runs in this
process and publishes them to RabbitMQ (:mod:`services.common.messaging.relay`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mesh.connect.peer import peer_metadata
from mesh.server import HostedService
from services.common.app import ServiceContext, main
from services.common.database import Database
from services.common.messaging.relay import OutboxRelay
from services.order.clients import Upstreams
from services.order.orders import Orders
from services.order.saga.faults import checkpoint_for
from services.order.saga.metrics import SagaMetrics
from services.order.servicer import OrderServicer
from services.order.settings import OrderSettings, order_settings_from_env
from services.order.store import OrderStore
from shop.order.v1 import order_pb2, order_pb2_grpc

UPSTREAM_POLICY: Mapping[str, Any] = {
    "defaults": {
        "retry": {
            "max_attempts": 3,
            "per_attempt_timeout": 1.5,
            "retryable_codes": ["UNAVAILABLE", "DEADLINE_EXCEEDED"],
        }
    },
    "services": {
        "user": {"methods": {"GetUser": {"idempotent": True}}},
        "inventory": {"methods": {"GetProduct": {"idempotent": True}}},
    },
}
SERVICE = order_pb2.DESCRIPTOR.services_by_name["OrderService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"


async def build(context: ServiceContext, own: OrderSettings) -> Sequence[HostedService]:
    settings = context.settings
    identity = peer_metadata(settings.name, settings.security.insecure)  # nothing under mTLS
    upstreams = Upstreams.connect(settings.upstreams, identity, factory=context.channel)
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
        relay = OutboxRelay(relay_database, settings.messaging, own.relay, registry=context.registry)
        relay.start()
        context.resources.push_async_callback(relay.close)  # before its database closes
    store = OrderStore(context.database, on_event=relay.wake if relay is not None else None)
    orders = Orders(
        store, saga=own.saga, checkpoint=checkpoint_for(own.crash_at), metrics=SagaMetrics(context.registry)
    )
    context.resources.push_async_callback(orders.close)  # before the channels it calls through
    orders.start_resuming(upstreams.for_service)
    servicer = OrderServicer(orders, upstreams, context.auth)
    return [
        HostedService(
            SERVICE, lambda server: order_pb2_grpc.add_OrderServiceServicer_to_server(servicer, server)
        )
    ]


if __name__ == "__main__":
    own = order_settings_from_env(os.environ)  # first: a bad value stops the process here
    main("order", MIGRATIONS, functools.partial(build, own=own), policy=UPSTREAM_POLICY)
