"""The order store's outbox writes and the outbox claims, on a SQLite file and on PostgreSQL.

An event exists if and only if the order change it reports committed, and each status
transition writes exactly one event, however the save is retried or refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from services.common.database import Database
from services.common.messaging import outbox
from services.common.migrations import migrate
from services.order import domain, events
from services.order.domain import Address, Line, Order, OrderStatus, Price
from services.order.store import OrderStore, StaleOrder
from shop.order.v1 import events_pb2, order_pb2

MIGRATIONS = Path("services/order/migrations")
TOKYO = Address("Ada", "1-1 Chiyoda", "Tokyo", "100-0001", "JP")
CATALOG = {"TEA": Price(1250, "EUR")}


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database("order", database_url)
    await migrate(database, MIGRATIONS)
    yield database
    await database.close()


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def make_order(order_id: str) -> Order:
    draft = domain.validate_create([Line("TEA", 2)], TOKYO, f"req-{order_id}")
    return domain.new_order(order_id, "u-ada", draft, CATALOG, "2025-01-01T00:00:00.000000+00:00")


async def rows(database: Database) -> list[dict[str, Any]]:
    return await database.transact(
        lambda tx: tx.query(
            "SELECT seq, event_id, routing_key, message_type, payload, sent_time FROM outbox ORDER BY seq"
        )
    )


def parse(row: dict[str, Any]) -> events_pb2.OrderEvent:
    event = events_pb2.OrderEvent()
    event.ParseFromString(bytes(row["payload"]))
    return event


async def test_create_writes_one_created_event_with_the_order(database: Database) -> None:
    wakes = Wakes()
    store = OrderStore(database, on_event=wakes)
    _, created = await store.create(make_order("o-1"))
    assert created
    again, created_again = await store.create(make_order("o-1"))  # the same request id: no new event
    assert not created_again and again.order_id == "o-1"
    found = await rows(database)
    assert [r["routing_key"] for r in found] == ["order.created"]
    assert found[0]["message_type"] == "shop.order.v1.OrderEvent" and found[0]["sent_time"] is None
    event = parse(found[0])
    assert event.event_id == found[0]["event_id"]
    assert event.kind == events_pb2.ORDER_EVENT_KIND_CREATED
    assert event.order.order_id == "o-1" and event.order.status == order_pb2.ORDER_STATUS_PENDING
    assert event.order.total.units == 25 and event.occur_time.seconds > 0
    assert wakes.count == 1


async def test_a_failed_create_leaves_neither_order_nor_event(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = OrderStore(database)
    await store.create(make_order("o-1"))
    taken = (await rows(database))[0]["event_id"]
    real = events.order_event

    def duplicate(routing_key: str, order: Order, event_id: str | None = None, now: str | None = None) -> Any:
        return real(routing_key, order, event_id=taken)  # the outbox insert violates its unique key

    monkeypatch.setattr(events, "order_event", duplicate)
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        await store.create(make_order("o-2"))
    assert [r["event_id"] for r in await rows(database)] == [taken]
    count = await database.transact(lambda tx: tx.one("SELECT COUNT(*) AS n FROM orders"))
    assert count == {"n": 1}


async def test_each_transition_writes_exactly_one_event(database: Database) -> None:
    wakes = Wakes()
    store = OrderStore(database, on_event=wakes)
    pending, _ = await store.create(make_order("o-1"))
    progressed = await store.save(replace(pending, reservation_id="r-1"))  # no status change
    assert [r["routing_key"] for r in await rows(database)] == ["order.created"]
    confirmed = await store.save(replace(progressed, status=OrderStatus.CONFIRMED))
    with pytest.raises(StaleOrder):  # a retried save from the copy read before: refused, no event
        await store.save(replace(progressed, status=OrderStatus.CONFIRMED))
    confirmed = await store.save(replace(confirmed, status_reason="again"))  # still CONFIRMED
    cancelled = await store.save(replace(confirmed, status=OrderStatus.CANCELLED))
    found = await rows(database)
    assert [r["routing_key"] for r in found] == ["order.created", "order.confirmed", "order.cancelled"]
    snapshots = [parse(r) for r in found]
    assert [e.kind for e in snapshots] == [
        events_pb2.ORDER_EVENT_KIND_CREATED,
        events_pb2.ORDER_EVENT_KIND_CONFIRMED,
        events_pb2.ORDER_EVENT_KIND_CANCELLED,
    ]
    assert snapshots[1].order.status == order_pb2.ORDER_STATUS_CONFIRMED
    assert snapshots[1].order.reservation_id == "r-1"
    assert snapshots[2].order.status == order_pb2.ORDER_STATUS_CANCELLED
    assert len({e.event_id for e in snapshots}) == 3
    assert cancelled.version == 5
    assert wakes.count == 3  # one per event, none for the saves without one


async def test_a_save_without_the_lease_writes_nothing(database: Database) -> None:
    store = OrderStore(database)
    pending, _ = await store.create(make_order("o-1"))
    assert await store.claim("o-1", "runner-a", now=100.0, ttl=10.0)
    with pytest.raises(StaleOrder):
        await store.save(replace(pending, status=OrderStatus.CONFIRMED), owner="runner-b")
    assert [r["routing_key"] for r in await rows(database)] == ["order.created"]
    assert (await store.get("o-1")).status is OrderStatus.PENDING


async def test_claims_keep_one_relay_publishing_at_a_time(database: Database) -> None:
    store = OrderStore(database)
    for n in range(5):
        await store.create(make_order(f"o-{n}"))
    first = await database.transact(lambda tx: outbox.claim(tx, "relay-a", 100.0, 30.0, 3))
    assert [m.seq for m in first] == sorted(m.seq for m in first) and len(first) == 3
    assert all(m.attempts == 1 for m in first)
    # While relay-a holds a live claim, relay-b gets nothing, even rows relay-a did not take.
    assert await database.transact(lambda tx: outbox.claim(tx, "relay-b", 110.0, 30.0, 10)) == []
    assert await database.transact(lambda tx: outbox.mark_sent(tx, [first[0].seq], "now")) == 1
    # relay-a's claim expired (it died): relay-b takes over every unsent row, in order.
    taken = await database.transact(lambda tx: outbox.claim(tx, "relay-b", 131.0, 30.0, 10))
    assert [m.seq for m in taken] == sorted(m.seq for m in taken)
    unsent = [r["event_id"] for r in await rows(database) if r["sent_time"] is None]
    assert [m.event_id for m in taken] == unsent and unsent[:2] == [m.event_id for m in first[1:]]
    assert len(taken) == 4 and taken[0].attempts == 2
    assert await database.transact(lambda tx: outbox.release(tx, "relay-b")) == 4
    again = await database.transact(lambda tx: outbox.claim(tx, "relay-a", 132.0, 30.0, 10))
    assert [m.seq for m in again] == [m.seq for m in taken]
    assert await database.transact(outbox.pending) == 4
    assert await database.transact(lambda tx: outbox.mark_sent(tx, [m.seq for m in again], "now")) == 4
    assert await database.transact(outbox.pending) == 0
    assert await database.transact(lambda tx: outbox.claim(tx, "relay-b", 133.0, 30.0, 10)) == []


async def test_a_claim_leaves_the_rows_it_is_told_to_skip(database: Database) -> None:
    store = OrderStore(database)
    for n in range(4):
        await store.create(make_order(f"o-{n}"))
    seqs = [int(r["seq"]) for r in await rows(database)]
    # The relay's parked rows (a bug kept them from being relayed) do not fill its batches.
    taken = await database.transact(
        lambda tx: outbox.claim(tx, "relay-a", 100.0, 30.0, 2, {seqs[0], seqs[2]})
    )
    assert [m.seq for m in taken] == [seqs[1], seqs[3]]
    assert await database.transact(lambda tx: outbox.release(tx, "relay-a")) == 2
    # Another process (no parked rows) takes them all again, the skipped ones first.
    everything = await database.transact(lambda tx: outbox.claim(tx, "relay-b", 101.0, 30.0, 10))
    assert [m.seq for m in everything] == seqs
    assert [m.attempts for m in everything] == [1, 2, 1, 2]
