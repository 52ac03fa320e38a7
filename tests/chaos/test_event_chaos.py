"""The event bus under a broker crash: a private RabbitMQ node SIGKILLed while 1,000 events flow.

A whole shop of real processes (user with its notification consumer, inventory, payment with
its billing consumer, shipping, order with its outbox relay) talks to a private broker node
(tests/support/rabbit_node.py), never to the machine's: that one is shared and must never be
stopped. Orders are placed concurrently through gRPC; while their events flow the node's
whole process tree is SIGKILLed, kept down for a moment (orders keep coming: their events wait
in the outbox) and restarted over the same mnesia dir. Then, once the outbox is drained and
the consumers caught up (polled), what the services committed must show:

- every outbox event applied exactly once by the notification consumer (one ``notifications``
  row per event id: none missing, none doubled), and nothing else applied;
- exactly one invoice per confirmed order, and none for any other;
- both dead-letter queues empty;
- the shop's invariants (tests/support/invariants.py).

Runs on its own xdist worker (``-n 2 --dist loadgroup``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import grpc
import pytest

from services.common.messaging.consumer import dead_letter_queue
from services.common.settings import MessagingSettings
from services.inventory.catalog import DEMO_CATALOG
from shop.inventory.v1 import inventory_pb2 as inv
from shop.inventory.v1.inventory_pb2_grpc import InventoryServiceStub
from shop.order.v1 import order_pb2 as pb
from shop.order.v1.order_pb2_grpc import OrderServiceStub
from shop.shipping.v1 import shipping_pb2 as ship
from tests.support.invariants import ShopDatabases, rows, violations
from tests.support.processes import ServiceProcess, free_port, service_env, stop_all
from tests.support.rabbit_node import RabbitNode
from tests.support.saga_shop import SAGA_ENV, login
from tests.support.tokens import KeyPair

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("event-chaos")]

SERVICES = ("user", "inventory", "payment", "shipping", "order")
PARTICIPANTS = ("user", "inventory", "payment", "shipping")
CONSUMERS = ("billing", "notifications")
SKU = "TEA-SENCHA"
ORDERS = 500  # created + confirmed: 2 events each, 1,000 in all
IN_FLIGHT = 16
KILL_AFTER_ORDERS = 120  # the broker dies with most of the flow still to come
OUTAGE_SECONDS = 2.5  # how long the broker stays dead (an outage, not a readiness wait)
CATCH_UP_SECONDS = 90
TOKYO = ship.Address(
    recipient="Ada", line1="1-1 Chiyoda", city="Tokyo", postal_code="100-0001", country_code="JP"
)


@dataclass
class EventShop:
    """Five service processes on SQLite files, on one namespace of a private broker node."""

    root: Path
    keys: KeyPair
    node: RabbitNode
    namespace: str = field(default_factory=lambda: f"chaos-{uuid.uuid4().hex[:10]}")
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def urls(self) -> dict[str, str]:
        return {n: str(self.root / "data" / f"{n}.sqlite3") for n in SERVICES}

    @property
    def databases(self) -> ShopDatabases:
        return ShopDatabases(**{n: self.urls[n] for n in ("order", "inventory", "payment", "shipping")})

    @property
    def messaging(self) -> MessagingSettings:
        return MessagingSettings(amqp_url=self.node.url, namespace=self.namespace)

    def address(self, name: str) -> str:
        return self.processes[name].address

    def _process(self, name: str, **env: str) -> ServiceProcess:
        port = free_port()
        base = {
            "MESH_PORT": str(port),
            "MESH_DATA_DIR": str(self.root / "data"),
            f"{name.upper()}_DATABASE_URL": self.urls[name],
            "SHOP_AMQP_URL": self.node.url,
            "SHOP_EVENTS_NAMESPACE": self.namespace,
            **self.keys.env(name),
        }
        return ServiceProcess(name, port, service_env(base, **env), self.root / f"{name}-{port}.log")

    def start(self) -> None:
        extra: dict[str, dict[str, str]] = {"inventory": {"INVENTORY_SEED_DEMO": "1"}}
        for name in PARTICIPANTS:
            self.processes[name] = self._process(name, **extra.get(name, {}))
        for process in self.processes.values():
            process.start()
        upstreams = {f"MESH_UPSTREAM_{n.upper()}": self.address(n) for n in PARTICIPANTS}
        self.processes["order"] = self._process("order", **upstreams, **SAGA_ENV).start()

    def stop(self) -> None:
        stop_all(self.processes.values())

    def logs(self, size: int = 3000) -> str:
        return "\n".join(f"--- {n} ---\n{p.logs()[-size:]}" for n, p in self.processes.items())


@pytest.fixture
def node() -> Iterator[RabbitNode]:
    broker = RabbitNode.create()  # under /tmp: the broker user cannot enter pytest's 0700 tmp dirs
    try:
        yield broker.start()
    finally:
        broker.close()


@pytest.fixture
def shop(tmp_path: Path, jwt_keys: KeyPair, node: RabbitNode) -> Iterator[EventShop]:
    running = EventShop(tmp_path, jwt_keys, node)
    try:
        running.start()
        yield running
    finally:
        running.stop()


async def queue_state(messaging: MessagingSettings, queue: str) -> tuple[int, int] | None:
    """(ready messages, consumers) of a queue on the node; None when it does not exist."""
    connection = await aio_pika.connect(messaging.amqp_url, timeout=5)
    try:
        channel = await connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return None
        result = declared.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)
    finally:
        await connection.close()


async def until(check: Callable[[], object], within: float, what: str) -> None:
    """Poll an async check until it returns true, or fail naming what was awaited."""
    deadline = time.monotonic() + within
    while True:
        if await check():  # type: ignore[misc]
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within} s: {what}")
        await asyncio.sleep(0.1)


async def consumers_attached(shop: EventShop) -> bool:
    for consumer in CONSUMERS:
        state = await queue_state(shop.messaging, shop.messaging.queue(consumer))
        if state is None or state[1] == 0:
            return False
    return True


async def count(url: str, service: str, sql: str) -> int:
    found = await rows(url, service, sql)
    return int(next(iter(found[0].values())))


async def restock(shop: EventShop, quantity: int) -> None:
    async with grpc.aio.insecure_channel(shop.address("inventory")) as channel:
        await InventoryServiceStub(channel).RestockProduct(
            inv.RestockProductRequest(sku=SKU, quantity=quantity, request_id=f"restock-{uuid.uuid4().hex}"),
            metadata=shop.keys.metadata("admin-chaos", ("admin",)),
            timeout=10,
        )


async def place_orders(shop: EventShop, customer: tuple[tuple[str, str], ...], placed: list[str]) -> None:
    """ORDERS orders, IN_FLIGHT at a time; each one's id is appended to ``placed`` when created."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    async with grpc.aio.insecure_channel(shop.address("order")) as channel:
        orders = OrderServiceStub(channel)

        async def one() -> None:
            async with gate:
                request = pb.CreateOrderRequest(
                    items=[pb.OrderItem(sku=SKU, quantity=1)],
                    shipping_address=TOKYO,
                    request_id=f"chaos-{uuid.uuid4().hex}",
                )
                reply = await orders.CreateOrder(request, metadata=customer, timeout=60)
                placed.append(reply.order.order_id)

        await asyncio.gather(*(one() for _ in range(ORDERS)))


async def test_a_broker_killed_while_1000_events_flow_loses_none_and_applies_none_twice(
    shop: EventShop, node: RabbitNode
) -> None:
    started = time.monotonic()
    await until(lambda: consumers_attached(shop), 30, "billing and notifications consuming")
    await restock(shop, ORDERS)
    initial_stock = {p.sku: p.stock + (ORDERS if p.sku == SKU else 0) for p in DEMO_CATALOG}
    with grpc.insecure_channel(shop.address("user")) as users:
        customer = await asyncio.to_thread(login, users, f"chaos-{uuid.uuid4().hex[:8]}@example.com")
    placed: list[str] = []
    flow = asyncio.ensure_future(place_orders(shop, customer, placed))
    outbox = shop.urls["order"]

    async def enough_placed() -> bool:
        if flow.done():
            flow.result()  # re-raise a failure of the load
        return len(placed) >= KILL_AFTER_ORDERS

    await until(enough_placed, 60, f"{KILL_AFTER_ORDERS} orders placed")
    await asyncio.to_thread(node.kill)
    killed_at = time.monotonic()
    rows_at_kill = await count(outbox, "order", "SELECT COUNT(*) FROM outbox")
    await asyncio.sleep(OUTAGE_SECONDS)
    rows_at_restart = await count(outbox, "order", "SELECT COUNT(*) FROM outbox")
    unsent_at_restart = await count(outbox, "order", "SELECT COUNT(*) FROM outbox WHERE sent_time IS NULL")
    await asyncio.to_thread(node.start)
    await flow
    placed_at = time.monotonic()
    assert len(placed) == ORDERS
    assert rows_at_restart > rows_at_kill, "no event was produced while the broker was down"
    assert unsent_at_restart > 0, "nothing waited in the outbox during the outage"

    async def caught_up() -> bool:
        unsent = await count(outbox, "order", "SELECT COUNT(*) FROM outbox WHERE sent_time IS NULL")
        open_sagas = await count(outbox, "order", "SELECT COUNT(*) FROM orders WHERE saga_open <> 0")
        events = await count(outbox, "order", "SELECT COUNT(*) FROM outbox")
        notified = await count(
            shop.urls["user"], "user", "SELECT COUNT(DISTINCT event_id) FROM notifications"
        )
        confirmed = await count(
            outbox, "order", "SELECT COUNT(*) FROM outbox WHERE routing_key = 'order.confirmed'"
        )
        invoices = await count(shop.urls["payment"], "payment", "SELECT COUNT(*) FROM invoices")
        queues = [await queue_state(shop.messaging, shop.messaging.queue(c)) for c in CONSUMERS]
        idle = all(q is not None and q[0] == 0 for q in queues)  # nothing left to deliver
        return unsent == 0 and open_sagas == 0 and notified == events and invoices == confirmed and idle

    try:
        await until(caught_up, CATCH_UP_SECONDS, "outbox drained, notifications and invoices caught up")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{shop.logs()}") from None
    caught_up_at = time.monotonic()

    events = {
        str(r["event_id"]): str(r["routing_key"])
        for r in await rows(outbox, "order", "SELECT event_id, routing_key FROM outbox")
    }
    assert len(events) >= 2 * ORDERS
    notified = Counter(
        str(r["event_id"])
        for r in await rows(shop.urls["user"], "user", "SELECT event_id FROM notifications")
    )
    assert sorted(e for e in events if notified[e] == 0) == [], "events lost"
    assert {e: n for e, n in notified.items() if n != 1} == {}, "events applied twice"
    assert set(notified) == set(events), "notifications for events the outbox never held"

    documents = await rows(outbox, "order", "SELECT order_id, status FROM orders")
    confirmed = {str(d["order_id"]) for d in documents if str(d["status"]) == "CONFIRMED"}
    invoices = Counter(
        str(r["order_id"])
        for r in await rows(shop.urls["payment"], "payment", "SELECT order_id FROM invoices")
    )
    assert set(invoices) == confirmed and set(invoices.values()) <= {1}
    for consumer in CONSUMERS:
        state = await queue_state(shop.messaging, dead_letter_queue(shop.messaging.queue(consumer)))
        assert state is not None and state[0] == 0, f"{consumer}'s DLQ holds {state}"
    assert await violations(shop.databases, initial_stock) == []
    print(  # shown with -s: where the time went
        f"events {len(events)}, at kill {rows_at_kill}, at restart {rows_at_restart} "
        f"({unsent_at_restart} unsent); kill at {killed_at - started:.1f}s, all placed at "
        f"{placed_at - started:.1f}s, caught up at {caught_up_at - started:.1f}s"
    )
