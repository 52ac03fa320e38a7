"""The order store, and the order use cases over it, on a SQLite file and on PostgreSQL.

Participants here are the in-memory fakes of the orchestrator tests: this file is about what the
database keeps (documents, idempotency keys, versions, pages), not about the other services.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from mesh.errors import DependencyUnavailable
from mesh.identity import Principal
from services.common.database import Database
from services.common.errors import NotFound
from services.common.idempotency import KeyReused
from services.common.migrations import migrate
from services.order import domain
from services.order.domain import Address, Line, Order, OrderStatus, Outcome, Price
from services.order.orders import Orders
from services.order.saga.definition import ORDER_STEPS
from services.order.store import OrderStore, StaleOrder
from tests.conftest import POSTGRES_ADMIN_DSN
from tests.support.waiting import wait_until
from tests.unit.services.test_order_saga_orchestrator import FakeParticipants

MIGRATIONS = Path("services/order/migrations")
TOKYO = Address("Ada", "1-1 Chiyoda", "Tokyo", "100-0001", "JP")
CATALOG = {"TEA": Price(1250, "EUR"), "CUP": Price(900, "EUR")}
ADA, BOB = Principal("u-ada"), Principal("u-bob")


class FakeLookups:
    def __init__(self, down: str = "") -> None:
        self.down = down
        self.asked: list[str] = []

    async def check_user(self, user_id: str) -> None:
        self.asked.append(user_id)
        if self.down == "user":
            raise DependencyUnavailable("user service")

    async def catalog(self, skus: Iterable[str]) -> dict[str, Price]:
        if self.down == "inventory":
            raise DependencyUnavailable("inventory service")
        return {sku: CATALOG[sku] for sku in skus if sku in CATALOG}


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database("order", database_url)
    await migrate(database, MIGRATIONS)
    yield database
    await database.close()


def make_order(order_id: str, user_id: str = "u-ada", request_id: str = "", at: str = "") -> Order:
    draft = domain.validate_create([Line("TEA", 2), Line("CUP", 1)], TOKYO, request_id or f"req-{order_id}")
    moment = at or "2025-01-01T00:00:00.000000+00:00"
    return domain.new_order(order_id, user_id, draft, CATALOG, moment)


def draft(request_id: str, *lines: Line) -> domain.Draft:
    return domain.validate_create(list(lines) or [Line("TEA", 1)], TOKYO, request_id)


async def test_migrations_are_idempotent_and_documents_are_json(database_url: str) -> None:
    database = Database("order", database_url)
    try:
        assert await migrate(database, MIGRATIONS) == [
            1,
            2,
            3,
            4,
        ]  # 002: saga lease, 003: outbox, 004: request keys
        assert await migrate(database, MIGRATIONS) == []
        if database.dialect == "postgresql":
            row = await database.transact(
                lambda tx: tx.one(
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_name = 'orders' AND column_name = 'document'"
                )
            )
            assert row == {"data_type": "jsonb"}
    finally:
        await database.close()


async def test_create_is_once_per_user_and_request_id(database: Database) -> None:
    store = OrderStore(database)
    first, created = await store.create(make_order("ord_1", request_id="same"))
    assert created and first.version == 1
    again, created = await store.create(make_order("ord_2", request_id="same"))
    assert not created and again == first
    other, created = await store.create(make_order("ord_3", user_id="u-bob", request_id="same"))
    assert created and other.order_id == "ord_3"
    assert await store.find("u-ada", "same") == first
    assert await store.find("u-ada", "unknown") is None
    with pytest.raises(NotFound):
        await store.get("ord_missing")


async def test_the_whole_document_round_trips_and_stale_saves_are_refused(database: Database) -> None:
    store = OrderStore(database)
    order, _ = await store.create(make_order("ord_1"))
    step = ORDER_STEPS[0]
    changed = domain.record(order, step, Outcome.COMPLETED, "held ✓", "2025-01-01T00:00:01.000000+00:00")
    changed = domain.record(changed, ORDER_STEPS[1], Outcome.FAILED, "timeout", changed.update_time, True)
    changed = domain.begin_cancel(changed, "payment service did not answer in time", changed.update_time)
    saved = await store.save(changed)
    assert saved.version == 2
    loaded = await store.get("ord_1")
    assert loaded == changed and loaded.version == 2
    assert loaded.steps[1].uncertain and loaded.reservation_id == "ord_1.reserve"
    with pytest.raises(StaleOrder):
        await store.save(replace(changed, status_reason="from a stale copy"))
    assert (await store.get("ord_1")).status_reason == ""


async def test_listing_is_newest_first_paginated_and_per_user(database: Database) -> None:
    store = OrderStore(database)
    for n in range(5):
        await store.create(make_order(f"ord_{n}", at=f"2025-01-0{n + 1}T00:00:00.000000+00:00"))
    await store.create(make_order("ord_b", user_id="u-bob"))
    first = await store.list_for_user("u-ada", None, 2)
    assert [o.order_id for o in first] == ["ord_4", "ord_3"]
    rest = await store.list_for_user("u-ada", (first[-1].create_time, first[-1].order_id), 10)
    assert [o.order_id for o in rest] == ["ord_2", "ord_1", "ord_0"]
    assert [o.order_id for o in await store.list_for_user("u-bob", None, 10)] == ["ord_b"]


async def test_placing_twice_with_one_request_id_has_one_effect(database: Database) -> None:
    orders, fake = Orders(OrderStore(database)), FakeParticipants()
    results = await asyncio.gather(
        *(orders.create(ADA.subject, draft("once"), FakeLookups(), fake) for _ in range(3))
    )
    assert len({o.order_id for o in results}) == 1
    assert all(o.status is OrderStatus.CONFIRMED for o in results)
    assert fake.calls.count("reserve_stock") == 1 and fake.calls.count("commit_stock") == 1
    # Another body under the same key is refused, never answered with the first order.
    with pytest.raises(KeyReused):
        await orders.create(ADA.subject, draft("once", Line("CUP", 9)), FakeLookups(), fake)
    assert fake.calls.count("reserve_stock") == 1


async def test_a_pending_order_is_resumed_by_a_resend(database: Database) -> None:
    store = OrderStore(database)
    orders = Orders(store)
    stalled = FakeParticipants(authorize_payment=asyncio.CancelledError())  # type: ignore[arg-type]
    with pytest.raises(asyncio.CancelledError):  # the caller went away mid-saga
        await orders.create(ADA.subject, draft("resume"), FakeLookups(), stalled)
    pending = await store.find(ADA.subject, "resume")
    assert pending is not None and pending.status is OrderStatus.PENDING
    fake = FakeParticipants()
    order = await orders.create(ADA.subject, draft("resume"), FakeLookups(), fake)
    assert order.status is OrderStatus.CONFIRMED
    assert fake.calls == ["authorize_payment", "schedule_shipment", "capture_payment", "commit_stock"]


@pytest.mark.parametrize("down", ["user", "inventory"])
async def test_nothing_is_stored_when_a_lookup_service_is_down(database: Database, down: str) -> None:
    store = OrderStore(database)
    fake = FakeParticipants()
    with pytest.raises(DependencyUnavailable):
        await Orders(store).create(ADA.subject, draft("down"), FakeLookups(down=down), fake)
    assert await store.find(ADA.subject, "down") is None and fake.calls == []


async def test_owners_and_admins_see_an_order_and_others_do_not(database: Database) -> None:
    orders = Orders(OrderStore(database))
    order = await orders.create(ADA.subject, draft("mine"), FakeLookups(), FakeParticipants())
    assert (await orders.get(ADA, order.order_id)).order_id == order.order_id
    assert (await orders.get(Principal("boss", frozenset({"admin"})), order.order_id)).user_id == ADA.subject
    with pytest.raises(NotFound):
        await orders.get(BOB, order.order_id)
    with pytest.raises(NotFound):
        await orders.cancel(BOB, order.order_id, FakeParticipants())


async def test_cancel_undoes_a_confirmed_order_once(database: Database) -> None:
    orders, fake = Orders(OrderStore(database)), FakeParticipants()
    order = await orders.create(ADA.subject, draft("cancel-me"), FakeLookups(), fake)
    fake.calls.clear()
    cancelled = await orders.cancel(ADA, order.order_id, fake)
    assert (cancelled.status, cancelled.status_reason) == (OrderStatus.CANCELLED, "cancelled by customer")
    assert fake.calls == ["cancel_shipment", "refund_payment", "release_stock"]
    assert await orders.cancel(ADA, order.order_id, fake) == cancelled
    assert fake.calls == ["cancel_shipment", "refund_payment", "release_stock"]


async def test_watch_follows_an_order_until_it_is_terminal(database: Database) -> None:
    store = OrderStore(database)
    orders = Orders(store, watch_poll_seconds=60)  # wakeups must come from saves, not from polling
    gate, at_gate, first_seen = asyncio.Event(), asyncio.Event(), asyncio.Event()

    class Gated(FakeParticipants):
        async def authorize_payment(self, order: Order) -> str:
            at_gate.set()  # stock is reserved and saved; the run is held here
            await gate.wait()
            return await super().authorize_payment(order)

    creating = asyncio.create_task(orders.create(ADA.subject, draft("watched"), FakeLookups(), Gated()))
    await asyncio.wait_for(at_gate.wait(), 10)
    pending = await store.find(ADA.subject, "watched")
    assert pending is not None
    seen: list[Order] = []

    async def follow() -> None:
        async for order in orders.watch(ADA, pending.order_id):
            seen.append(order)
            first_seen.set()

    following = asyncio.create_task(follow())
    await asyncio.wait_for(first_seen.wait(), 10)
    gate.set()
    await asyncio.wait_for(following, 10)
    assert seen[0].status is OrderStatus.PENDING and seen[-1].status is OrderStatus.CONFIRMED
    assert [o.version for o in seen] == sorted({o.version for o in seen}) and len(seen) >= 2
    assert (await creating) == seen[-1]
    with pytest.raises(NotFound):
        await anext(orders.watch(BOB, pending.order_id))
    assert [o.status async for o in orders.watch(ADA, pending.order_id)] == [OrderStatus.CONFIRMED]


async def test_a_save_that_waited_for_another_writers_lock_is_stale_and_writes_no_event(
    postgres_dsn: str,
) -> None:
    """PostgreSQL: the save's single UPDATE queues behind a transaction that moves the order
    on; once that commits, the save matches nothing (StaleOrder) and adds no outbox row."""
    database = Database("order", postgres_dsn)
    try:
        await migrate(database, MIGRATIONS)
        store = OrderStore(database)
        order, _ = await store.create(make_order("ord_race"))
        outbox_rows = "SELECT count(*) AS n FROM outbox"
        events_before = await database.read(lambda tx: tx.one(outbox_rows))
        with psycopg.connect(postgres_dsn) as other:  # a transaction left open: it holds the row
            other.execute("UPDATE orders SET version = version + 1 WHERE order_id = 'ord_race'")
            confirming = replace(order, status=OrderStatus.CANCELLED, cancel_reason="raced")
            save = asyncio.ensure_future(store.save(confirming))
            await wait_until(
                lambda: blocked_on_a_lock(postgres_dsn), 10, "the save to queue for the row lock"
            )
            assert not save.done()
            other.commit()
        with pytest.raises(StaleOrder):
            await asyncio.wait_for(save, 10)
        assert await database.read(lambda tx: tx.one(outbox_rows)) == events_before
    finally:
        await database.close()


def blocked_on_a_lock(dsn: str) -> bool:
    """Whether a session of the test's database waits for a lock."""
    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'", (name,)
        ).fetchone()
    return bool(row and row[0])
