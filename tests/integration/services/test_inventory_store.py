"""The inventory store against a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.database import Database
from services.common.errors import FailedPrecondition, NotFound
from services.common.migrations import migrate
from services.inventory.domain import Line, ReservationState
from services.inventory.store import InventoryStore, ProductRecord

MIGRATIONS = Path("services/inventory/migrations")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[InventoryStore]:
    database = Database("inventory", database_url)
    await migrate(database, MIGRATIONS)
    store = InventoryStore(database)
    await store.seed(
        (ProductRecord("TEA", "Tea", 1250, "EUR", 50), ProductRecord("CUP", "Cup", 900, "EUR", 3))
    )
    yield store
    await database.close()


async def test_migrations_are_idempotent(database_url: str) -> None:
    database = Database("inventory", database_url)
    try:
        assert await migrate(database, MIGRATIONS) == [1, 2]  # 002: request keys
        assert await migrate(database, MIGRATIONS) == []
    finally:
        await database.close()


async def test_reserve_commit_release_move_stock(store: InventoryStore) -> None:
    held = await store.reserve("r1", "o1", [Line("CUP", 2), Line("TEA", 5)])
    assert held.state is ReservationState.HELD
    assert (await store.get_product("TEA")).stock == 45
    assert (await store.commit("r1")).state is ReservationState.COMMITTED
    assert (await store.commit("r1")).state is ReservationState.COMMITTED  # idempotent
    released = await store.release("r1")
    assert released is not None and released.state is ReservationState.RELEASED
    assert (await store.release("r1")) is not None  # a second release changes nothing
    assert (await store.get_product("TEA")).stock == 50
    assert (await store.get_product("CUP")).stock == 3


async def test_reserve_is_idempotent_per_reservation_id(store: InventoryStore) -> None:
    await store.reserve("r1", "o1", [Line("TEA", 5)])
    again = await store.reserve("r1", "o1", [Line("TEA", 5)])
    assert again.items == (Line("TEA", 5),)
    assert (await store.get_product("TEA")).stock == 45


async def test_insufficient_stock_reserves_nothing(store: InventoryStore) -> None:
    with pytest.raises(FailedPrecondition) as raised:
        await store.reserve("r1", "o1", [Line("CUP", 4), Line("TEA", 1)])
    assert raised.value.reason == "INSUFFICIENT_STOCK"
    assert raised.value.metadata["sku"] == "CUP"
    assert (await store.get_product("TEA")).stock == 50
    with pytest.raises(NotFound):
        await store.get_reservation("r1")


async def test_an_unknown_product_reserves_nothing(store: InventoryStore) -> None:
    """The reservation row is written before the stock is taken: a line refused after it must
    take the row back with it."""
    with pytest.raises(NotFound, match="NOPE"):
        await store.reserve("r1", "o1", [Line("TEA", 1), Line("NOPE", 1)])
    assert (await store.get_product("TEA")).stock == 50
    with pytest.raises(NotFound):
        await store.get_reservation("r1")
    assert (await store.reserve("r1", "o1", [Line("TEA", 1)])).items == (Line("TEA", 1),)


async def test_release_of_unknown_reservation_is_a_noop(store: InventoryStore) -> None:
    assert await store.release("never-made") is None


async def test_commit_after_release_is_refused(store: InventoryStore) -> None:
    await store.reserve("r1", "o1", [Line("TEA", 1)])
    await store.release("r1")
    with pytest.raises(FailedPrecondition):
        await store.commit("r1")


async def test_restock_applies_once_per_request_id(store: InventoryStore) -> None:
    await store.restock("CUP", 10, "req-1")
    await store.restock("CUP", 10, "req-1")
    assert (await store.get_product("CUP")).stock == 13


async def test_concurrent_reservations_never_oversell(store: InventoryStore) -> None:
    await store.restock("CUP", 47, "fill")  # 50 on the shelf

    async def attempt(n: int) -> bool:
        try:
            await store.reserve(f"r{n}", f"o{n}", [Line("CUP", 1)])
            return True
        except FailedPrecondition:
            return False

    results = await asyncio.gather(*(attempt(n) for n in range(200)))
    assert sum(results) == 50
    assert (await store.get_product("CUP")).stock == 0
