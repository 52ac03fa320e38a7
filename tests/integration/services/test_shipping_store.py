"""The shipping store against a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from mesh.identity import Principal
from services.common.database import Database
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.common.migrations import migrate
from services.shipping.domain import Address, Schedule, ShipmentState, ShippingPolicy, tracking_number
from services.shipping.store import ShippingStore

MIGRATIONS = Path("services/shipping/migrations")
POLICY = ShippingPolicy()
TOKYO = Address("Aiko Tanaka", "1-2-3 Shibuya", "Tokyo", "150-0002", "JP")
OWNER = Principal("u-1", frozenset({"customer"}))
STRANGER = Principal("u-2", frozenset({"customer"}))
ADMIN = Principal("admin-1", frozenset({"admin"}))
SAGA = Principal("order", frozenset({"service"}))


def schedule(shipment_id: str = "s-1", address: Address = TOKYO) -> Schedule:
    return Schedule(shipment_id, "o-1", "u-1", address)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database("shipping", database_url)
    await migrate(database, MIGRATIONS)
    yield database
    await database.close()


@pytest.fixture
def store(database: Database) -> ShippingStore:
    return ShippingStore(database)


async def count(database: Database) -> int:
    row = await database.transact(lambda tx: tx.one("SELECT COUNT(*) AS n FROM shipments"))
    assert row is not None
    return int(row["n"])


async def test_migrations_are_idempotent(database_url: str) -> None:
    database = Database("shipping", database_url)
    try:
        assert await migrate(database, MIGRATIONS) == [1, 2]  # 002: request keys
        assert await migrate(database, MIGRATIONS) == []
    finally:
        await database.close()


async def test_schedule_sets_tracking_and_estimate(store: ShippingStore) -> None:
    record = await store.schedule(schedule(), POLICY)
    assert record.state is ShipmentState.SCHEDULED
    assert record.address == TOKYO
    assert record.tracking_number == tracking_number("s-1")
    eta = datetime.fromisoformat(record.estimated_delivery_time)
    assert eta - datetime.fromisoformat(record.create_time) == timedelta(days=3)


async def test_concurrent_schedules_with_one_id_make_one_shipment(
    store: ShippingStore, database: Database
) -> None:
    # Overlapping calls open each worker thread's connection first, so the race below is real.
    await asyncio.gather(*(store.schedule(schedule(f"warm-{n}"), POLICY) for n in range(8)))
    results = await asyncio.gather(*(store.schedule(schedule(), POLICY) for _ in range(10)))
    assert len(set(results)) == 1
    assert await count(database) == 9


async def test_reusing_an_id_for_other_terms_is_refused(store: ShippingStore) -> None:
    await store.schedule(schedule(), POLICY)
    with pytest.raises(AlreadyExists):
        await store.schedule(schedule(address=replace(TOKYO, postal_code="150-0003")), POLICY)
    with pytest.raises(AlreadyExists):
        await store.schedule(Schedule("s-1", "o-2", "u-1", TOKYO), POLICY)


async def test_a_refused_destination_stores_nothing(store: ShippingStore, database: Database) -> None:
    with pytest.raises(FailedPrecondition) as raised:
        await store.schedule(schedule(address=replace(TOKYO, country_code="BR")), POLICY)
    assert raised.value.reason == "DESTINATION_NOT_SUPPORTED"
    assert await count(database) == 0


async def test_cancel_moves_a_shipment_and_repeats(store: ShippingStore) -> None:
    await store.schedule(schedule(), POLICY)
    cancelled = await store.cancel("s-1", OWNER)
    assert cancelled is not None and cancelled.state is ShipmentState.CANCELLED
    assert await store.cancel("s-1", SAGA) == cancelled
    assert await store.cancel("never-made", SAGA) is None


async def test_concurrent_cancels_agree(store: ShippingStore) -> None:
    await asyncio.gather(*(store.schedule(schedule(f"s-{n}"), POLICY) for n in range(1, 9)))
    results = await asyncio.gather(*(store.cancel("s-1", SAGA) for _ in range(10)))
    assert {r.state for r in results if r is not None} == {ShipmentState.CANCELLED}
    assert len({r.update_time for r in results if r is not None}) == 1


async def test_other_users_cannot_see_or_cancel_a_shipment(store: ShippingStore) -> None:
    await store.schedule(schedule(), POLICY)
    with pytest.raises(NotFound):
        await store.get("s-1", STRANGER)
    assert await store.cancel("s-1", STRANGER) is None  # as if unknown; nothing changes
    assert (await store.get("s-1", ADMIN)).state is ShipmentState.SCHEDULED
    assert (await store.get("s-1", OWNER)).shipment_id == "s-1"
