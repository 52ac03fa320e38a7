"""The order service process with its outbox relay, end to end on the machine's RabbitMQ.

A real shop (five processes) places orders; a test queue bound to the namespace's exchange
must receive, for each order, order.created and then order.confirmed (or order.cancelled when
the saga compensates), each carrying the order as committed. The process's /metrics shows the
relay's families. Everything the test declared on the broker is deleted at teardown.

The test itself is synchronous (the shop helpers drive processes and the broker with their own
event loops) and runs its asynchronous part with one ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest

from services.common.settings import MessagingSettings
from shop.order.v1 import events_pb2
from shop.order.v1 import order_pb2 as pb
from shop.order.v1.order_pb2_grpc import OrderServiceStub
from shop.shipping.v1 import shipping_pb2 as ship
from tests.conftest import POSTGRES_ADMIN_DSN
from tests.integration.services.test_relay import AMQP_URL, Listener, until
from tests.support.processes import free_port
from tests.support.saga_shop import PARTICIPANTS, SAGA_ENV, SagaShop, saga_shop
from tests.support.tokens import KeyPair

TOKYO = ship.Address(
    recipient="Ada", line1="1-1 Chiyoda", city="Tokyo", postal_code="100-0001", country_code="JP"
)
ANTARCTICA = ship.Address(
    recipient="Ada", line1="Base 1", city="McMurdo", postal_code="0000", country_code="AQ"
)


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("shop_outbox_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_placed_orders_publish_their_events_in_order(backend: str, tmp_path: Path, jwt_keys: KeyPair) -> None:
    settings = MessagingSettings(AMQP_URL, f"t-outbox-{uuid.uuid4().hex[:12]}")
    with saga_shop(tmp_path, jwt_keys, backend, POSTGRES_ADMIN_DSN) as shop:
        metrics_port = free_port()
        env = {f"MESH_UPSTREAM_{n.upper()}": shop.address(n) for n in PARTICIPANTS}
        env.update(SAGA_ENV)
        # This test's own namespace (over whatever the shop helper sets): its exchange and
        # test queue are created and deleted here.
        env.update(
            SHOP_AMQP_URL=AMQP_URL,
            SHOP_EVENTS_NAMESPACE=settings.namespace,
            MESH_METRICS_PORT=str(metrics_port),
        )
        asyncio.run(place_and_listen(shop, env, settings, metrics_port))


async def place_and_listen(
    shop: SagaShop, env: dict[str, str], settings: MessagingSettings, metrics_port: int
) -> None:
    listener = await Listener(settings).open()  # bound before the order service publishes anything
    try:
        shop.order = await asyncio.to_thread(shop._process("order", **env).start)
        await check_events(shop, listener, metrics_port)
    finally:
        await listener.close()


async def check_events(shop: SagaShop, listener: Listener, metrics_port: int) -> None:
    async with grpc.aio.insecure_channel(shop.address("order")) as channel:
        orders = OrderServiceStub(channel)
        placed = []
        for address in (TOKYO, ANTARCTICA):
            request = pb.CreateOrderRequest(
                items=[pb.OrderItem(sku="TEA-SENCHA", quantity=1)],
                shipping_address=address,
                request_id=f"req-{uuid.uuid4().hex}",
            )
            reply = await orders.CreateOrder(request, metadata=shop.customer, timeout=30)
            placed.append(reply.order)
    confirmed, cancelled = placed
    assert confirmed.status == pb.ORDER_STATUS_CONFIRMED
    assert cancelled.status == pb.ORDER_STATUS_CANCELLED

    async def four_events() -> bool:
        return len(await listener.drain()) >= 4

    await until(four_events, within=30, what="four order events")
    by_order: dict[str, list[events_pb2.OrderEvent]] = {}
    for message in listener.received:
        event = events_pb2.OrderEvent.FromString(message.body)
        assert message.message_id == event.event_id and message.type == "shop.order.v1.OrderEvent"
        by_order.setdefault(event.order.order_id, []).append(event)
    assert set(by_order) == {confirmed.order_id, cancelled.order_id}
    assert [(e.kind, e.order.status) for e in by_order[confirmed.order_id]] == [
        (events_pb2.ORDER_EVENT_KIND_CREATED, pb.ORDER_STATUS_PENDING),
        (events_pb2.ORDER_EVENT_KIND_CONFIRMED, pb.ORDER_STATUS_CONFIRMED),
    ]
    assert [(e.kind, e.order.status) for e in by_order[cancelled.order_id]] == [
        (events_pb2.ORDER_EVENT_KIND_CREATED, pb.ORDER_STATUS_PENDING),
        (events_pb2.ORDER_EVENT_KIND_CANCELLED, pb.ORDER_STATUS_CANCELLED),
    ]
    assert by_order[confirmed.order_id][1].order == confirmed  # the snapshot the API returns
    assert by_order[cancelled.order_id][1].order.status_reason == cancelled.status_reason != ""

    async def all_sent() -> bool:
        samples = scrape(metrics_port)
        return (
            samples.get("shop_outbox_pending") == 0
            and samples.get("shop_outbox_relay_lag_seconds_count") == 4
        )

    await until(all_sent, within=10, what="/metrics: nothing pending, four lags observed")
