"""Billing under a consumer crash: the payment process SIGKILLed while holding unacked messages.

Hundreds of order.confirmed events (and created/cancelled ones billing must ignore) are
published to a private namespace on the machine's RabbitMQ; the payment service consumes them
with a prefetch window, so at any moment dozens are delivered but not yet acked. The process
is SIGKILLed by PID mid-stream and restarted over the same database: the broker redelivers
what was in flight, the inbox skips what had committed, and the database must end with exactly
one invoice per confirmed order (0 lost, 0 twice), the right amounts, and an empty DLQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest

from services.common.values import money
from shop.order.v1 import events_pb2, order_pb2
from tests.conftest import StartService
from tests.support.bus import Bus, bus_namespace
from tests.support.invariants import rows

CONFIRMED = 300
OTHERS = 40  # created and cancelled events: billing must issue nothing for them
PREFETCH = 64
KILL_AFTER = 40  # invoices committed before the SIGKILL
pytestmark = pytest.mark.slow


@pytest.fixture
def bus() -> Iterator[Bus]:
    with bus_namespace(("billing",)) as namespace:
        yield namespace


def order_event(kind: int, n: int) -> events_pb2.OrderEvent:
    order = order_pb2.Order(
        order_id=f"ord-{n:04d}",
        user_id=f"usr-{n % 7}",
        payment_id=f"pay-{n:04d}",
        total=money(100 + n, "EUR"),
    )
    return events_pb2.OrderEvent(event_id=f"evt_{uuid.uuid4().hex}", kind=kind, order=order)  # type: ignore[arg-type]


async def count(url: str, sql: str) -> int:
    if not url.startswith("postgresql"):
        # A plain WAL reader: the service's Database begins IMMEDIATE (a writer), and a writer
        # polling the lock starves behind a consumer that commits back to back.
        with contextlib.closing(sqlite3.connect(url, timeout=30)) as connection:
            return int(connection.execute(sql).fetchone()[0])
    found = await rows(url, "payment", sql)
    return int(next(iter(found[0].values())))


async def test_a_consumer_killed_with_unacked_messages_loses_nothing_and_applies_nothing_twice(
    start_service: StartService, bus: Bus, database_url: str
) -> None:
    env = {
        **bus.env(),
        "PAYMENT_DATABASE_URL": database_url,
        "PAYMENT_CONSUMER_PREFETCH": str(PREFETCH),
        # A slower handler (20 ms per event), so the kill lands with the stream in full flow.
        "PAYMENT_CONSUMER_FAULT_DELAY_SECONDS": "0.02",
    }
    # A first process declares the durable queue and is killed idle, so every event is queued
    # before consumption starts: on a loaded machine publishing could otherwise be slower than
    # consuming, and the kill would find nothing in flight.
    declarer = start_service("payment", **env)
    await asyncio.to_thread(bus.wait_consumer, "billing")
    declarer.kill()
    confirmed = [order_event(events_pb2.ORDER_EVENT_KIND_CONFIRMED, n) for n in range(CONFIRMED)]
    others = [
        order_event(kind, CONFIRMED + n)
        for n, kind in enumerate(
            [events_pb2.ORDER_EVENT_KIND_CREATED, events_pb2.ORDER_EVENT_KIND_CANCELLED] * (OTHERS // 2)
        )
    ]
    await asyncio.to_thread(
        bus.publish, [e for pair in zip(confirmed, others * 8, strict=False) for e in pair]
    )
    await asyncio.to_thread(bus.publish, confirmed[len(others * 8) :])
    # Billing's queue is bound to order.confirmed only: the others are not even queued.
    assert await asyncio.to_thread(bus.wait_depth, bus.queue("billing"), CONFIRMED) == CONFIRMED
    first = start_service("payment", **env)

    deadline = time.monotonic() + 60
    while await count(database_url, "SELECT COUNT(*) FROM inbox") < KILL_AFTER:
        assert time.monotonic() < deadline, "billing never started applying events"
        await asyncio.sleep(0.01)
    ready_before_kill = await asyncio.to_thread(bus.depth, bus.queue("billing"))
    first.kill()  # SIGKILL by PID: no drain, no ack, no goodbye
    committed_at_kill = await count(database_url, "SELECT COUNT(*) FROM inbox")
    # Delivered to the dead consumer but neither ready nor committed: held unacked in flight.
    in_flight = CONFIRMED - ready_before_kill - committed_at_kill
    assert committed_at_kill < CONFIRMED and in_flight > 0, (ready_before_kill, committed_at_kill)
    print(
        f"killed with {committed_at_kill} committed, {ready_before_kill} ready, >= {in_flight} unacked in flight"
    )

    start_service("payment", **env)
    deadline = time.monotonic() + 90
    while await count(database_url, "SELECT COUNT(*) FROM invoices") < CONFIRMED:
        assert time.monotonic() < deadline, "billing did not catch up after the restart"
        await asyncio.sleep(0.05)
    # Settled: the queue is empty once the last message was acked (polled, bounded).
    assert await asyncio.to_thread(bus.wait_depth, bus.queue("billing"), 0) == 0

    invoices = await rows(database_url, "payment", "SELECT order_id, payment_id, amount_minor FROM invoices")
    per_order = Counter(str(i["order_id"]) for i in invoices)
    expected = {e.order.order_id for e in confirmed}
    assert set(per_order) == expected  # 0 lost, none for created or cancelled orders
    assert set(per_order.values()) == {1}  # 0 twice
    for invoice in invoices:
        n = int(str(invoice["order_id"]).removeprefix("ord-"))
        assert (invoice["payment_id"], int(invoice["amount_minor"])) == (f"pay-{n:04d}", 100 + n)
    assert await count(database_url, "SELECT COUNT(*) FROM inbox") == CONFIRMED
    assert await asyncio.to_thread(bus.depth, bus.dlq("billing")) == 0
