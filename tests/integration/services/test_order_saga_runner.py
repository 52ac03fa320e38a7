"""The saga runner over a real database (SQLite and PostgreSQL): leases, fencing, resume, retry.

Participants are the orchestrator tests' in-memory fakes; what is under test is what the order
database guarantees: one holder per order, saves fenced by the lease, open sagas found and
finished by a fresh runner, compensations retried until they succeed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from mesh.resilience import Backoff
from services.common.database import Database, Tx
from services.order import domain
from services.order.domain import Order, OrderStatus, Outcome
from services.order.orders import Orders
from services.order.participants import FailureKind, StepFailure
from services.order.saga.cli import main as sagas_main
from services.order.saga.definition import ORDER_STEPS
from services.order.saga.runner import SagaRunner, SagaSettings
from services.order.store import OrderStore, StaleOrder
from tests.integration.services.test_order_store import database, make_order  # noqa: F401 - fixture
from tests.unit.services.test_order_saga_orchestrator import FakeParticipants

FAST = SagaSettings(lease_seconds=0.5, retry_base_seconds=0.01, retry_max_seconds=0.05)


async def test_one_holder_at_a_time_until_the_lease_expires(database: Database) -> None:  # noqa: F811
    store = OrderStore(database)
    order, _ = await store.create(make_order("ord_lease"))
    assert await store.claim(order.order_id, "a", now=100.0, ttl=10)
    assert not await store.claim(order.order_id, "b", now=105.0, ttl=10)
    assert await store.claim(order.order_id, "a", now=105.0, ttl=10)  # the holder renews
    assert await store.claim(order.order_id, "b", now=116.0, ttl=10)  # a's lease ran out
    assert [lease.owner for lease in await store.unfinished()] == ["b"]
    assert await store.unfinished(now=120.0) == []  # held by b until 126
    assert len(await store.unfinished(now=127.0)) == 1


async def test_a_save_needs_the_lease_so_a_holder_that_lost_it_is_fenced(database: Database) -> None:  # noqa: F811
    store = OrderStore(database)
    order, _ = await store.create(make_order("ord_fence"))
    assert await store.claim(order.order_id, "a", now=100.0, ttl=1)
    assert await store.claim(order.order_id, "b", now=200.0, ttl=1)  # a paused past its lease
    moved = domain.begin_cancel(order, "late", order.update_time)
    with pytest.raises(StaleOrder):
        await store.save(moved, owner="a")  # b has not saved yet: only the lease stops a
    saved = await store.save(moved, owner="b")
    assert saved.version == order.version + 1


T = "2025-01-01T00:00:01.000000+00:00"  # a real time: the order's events carry it as a Timestamp


async def test_a_fresh_runner_resumes_open_sagas_and_finishes_them(database: Database) -> None:  # noqa: F811
    store = OrderStore(database)
    forward, _ = await store.create(make_order("ord_forward"))
    # One step done by a process that then died holding the lease (expired long ago).
    forward = await store.save(domain.record(forward, ORDER_STEPS[0], Outcome.COMPLETED, "held", T))
    assert await store.claim(forward.order_id, "dead", now=1.0, ttl=1)
    undoing, _ = await store.create(make_order("ord_undo"))
    undoing = await store.save(domain.record(undoing, ORDER_STEPS[0], Outcome.COMPLETED, "held", T))
    await store.save(domain.begin_cancel(undoing, "declined", T))
    assert await asyncio.to_thread(sagas_main, ["--database", database.url]) == 1  # listed as open

    fake = FakeParticipants()
    runner = SagaRunner(store, ORDER_STEPS, lambda order: None, FAST)
    started = await runner.resume_once(lambda: fake)
    assert sorted(started) == ["ord_forward", "ord_undo"]
    await asyncio.wait_for(asyncio.gather(*(runner.submit(o, lambda: fake) for o in started)), 10)
    assert (await store.get("ord_forward")).status is OrderStatus.CONFIRMED
    assert (await store.get("ord_undo")).status is OrderStatus.CANCELLED
    assert fake.calls.count("reserve_stock") == 0  # the completed step is not re-sent
    assert await store.unfinished() == []
    assert await asyncio.to_thread(sagas_main, ["--database", database.url]) == 0
    await runner.close()


async def test_a_saga_writes_the_claim_and_one_save_per_outcome_and_its_last_save_frees_the_lease(
    database: Database,  # noqa: F811
) -> None:
    """The lease rides on the saga's own writes: no separate read after the claim, no release."""
    store = OrderStore(database)
    order, _ = await store.create(make_order("ord_writes"))
    transactions: list[str] = []
    reads: list[str] = []
    transact, read = database.transact, database.read

    async def counted_transact(work: Callable[[Tx], Any]) -> Any:
        transactions.append("write")
        return await transact(work)

    async def counted_read(work: Callable[[Tx], Any]) -> Any:
        reads.append("read")
        return await read(work)

    database.transact = counted_transact  # type: ignore[method-assign]
    database.read = counted_read  # type: ignore[method-assign]
    runner = SagaRunner(store, ORDER_STEPS, lambda order: None, FAST)
    finished = await asyncio.wait_for(runner.submit(order.order_id, FakeParticipants), 10)
    assert finished is not None and finished.status is OrderStatus.CONFIRMED
    # the claim, one save per completed step (the last one confirms); nothing else
    assert (len(transactions), len(reads)) == (1 + len(ORDER_STEPS), 0)
    database.transact, database.read = transact, read  # type: ignore[method-assign]
    lease = await database.transact(
        lambda tx: tx.one(
            "SELECT lease_owner, lease_expires FROM orders WHERE order_id = ?", (order.order_id,)
        )
    )
    assert lease == {"lease_owner": "", "lease_expires": 0}
    assert await store.claim(order.order_id, "another", now=0.0, ttl=10)  # free: no wait for expiry
    await runner.close()


async def test_a_new_order_is_stored_with_the_runners_lease_and_driven_without_a_claim(
    database: Database,  # noqa: F811
) -> None:
    """Placing an order writes its insert and one save per step: the insert takes the lease."""
    orders = Orders(OrderStore(database), saga=FAST)
    writes: list[str] = []
    transact = database.transact

    async def counted(work: Callable[[Tx], Any]) -> Any:
        writes.append("write")
        return await transact(work)

    database.transact = counted  # type: ignore[method-assign]
    lookups = type("L", (), {"check_user": _noop, "catalog": _catalog})()
    order = await asyncio.wait_for(orders.create("u-ada", _draft("leased"), lookups, FakeParticipants()), 10)
    assert order.status is OrderStatus.CONFIRMED
    assert len(writes) == 1 + len(ORDER_STEPS)  # the insert, then one save per step
    database.transact = transact  # type: ignore[method-assign]
    lease = await database.read(
        lambda tx: tx.one("SELECT lease_owner FROM orders WHERE order_id = ?", (order.order_id,))
    )
    assert lease == {"lease_owner": ""}  # the confirming save gave it back
    await orders.close()


async def test_an_order_created_with_a_lease_is_not_taken_by_another_runner_until_it_expires(
    database: Database,  # noqa: F811
) -> None:
    store = OrderStore(database)
    order, created = await store.create(make_order("ord_created_leased"), lease=("a", 110.0))
    assert created
    assert not await store.claim(order.order_id, "b", now=105.0, ttl=10)
    assert await store.unfinished(now=105.0) == []  # no resume scan picks it up meanwhile
    assert await store.claim(order.order_id, "a", now=105.0, ttl=10)
    assert await store.claim(order.order_id, "b", now=116.0, ttl=10)  # a's lease ran out


async def test_a_failing_compensation_is_retried_until_it_succeeds(database: Database) -> None:  # noqa: F811
    class Flaky(FakeParticipants):
        failures = 3

        async def release_stock(self, order: Order) -> str:
            if self.failures:
                self.failures -= 1
                self.calls.append("release_stock")
                raise StepFailure(FailureKind.UNAVAILABLE, "inventory service", "inventory is down")
            return await super().release_stock(order)

    fake = Flaky(authorize_payment=StepFailure(FailureKind.BUSINESS, "payment service", "declined"))
    orders = Orders(OrderStore(database), saga=FAST)
    lookups = type("L", (), {"check_user": _noop, "catalog": _catalog})()
    order = await asyncio.wait_for(orders.create("u-ada", _draft("flaky"), lookups, fake), 10)
    assert (order.status, order.status_reason) == (OrderStatus.CANCELLED, "declined")
    assert fake.calls.count("release_stock") == 4 and fake.stock == {f"{order.order_id}.reserve": "RELEASED"}
    await orders.close()


async def test_each_retry_of_an_unfinished_saga_waits_on_the_given_backoff(database: Database) -> None:  # noqa: F811
    down = StepFailure(FailureKind.UNAVAILABLE, "inventory service", "inventory is down")
    fake = FakeParticipants(release_stock=down)  # the undo fails until the third retry's draw
    draws: list[int] = []

    def draw() -> float:
        draws.append(1)
        if len(draws) == 3:
            fake.fail.clear()
        return 0.0

    store = OrderStore(database)
    order, _ = await store.create(make_order("ord_backoff"))
    order = await store.save(domain.record(order, ORDER_STEPS[0], Outcome.COMPLETED, "held", T))
    await store.save(domain.begin_cancel(order, "declined", T))
    backoff = Backoff(initial=0.001, maximum=0.001, rng=draw)
    runner = SagaRunner(store, ORDER_STEPS, lambda order: None, FAST, backoff=backoff)
    finished = await asyncio.wait_for(runner.submit(order.order_id, lambda: fake), 10)
    assert finished is not None and finished.status is OrderStatus.CANCELLED
    assert len(draws) == 3 and fake.calls.count("release_stock") == 4  # one draw before each retry
    await runner.close()


async def test_create_answers_pending_at_its_deadline_and_the_saga_runs_on(database: Database) -> None:  # noqa: F811
    gate = asyncio.Event()

    class Slow(FakeParticipants):
        async def schedule_shipment(self, order: Order) -> str:
            await gate.wait()
            return await super().schedule_shipment(order)

    orders = Orders(OrderStore(database), saga=FAST)
    lookups = type("L", (), {"check_user": _noop, "catalog": _catalog})()
    pending = await orders.create("u-ada", _draft("slow"), lookups, Slow(), wait_seconds=0.2)
    assert pending.status is OrderStatus.PENDING
    gate.set()
    again = await asyncio.wait_for(orders.create("u-ada", _draft("slow"), lookups, Slow()), 10)
    assert again.order_id == pending.order_id and again.status is OrderStatus.CONFIRMED
    await orders.close()


async def _noop(*_: object) -> None:
    return None


async def _catalog(_: object, skus: object) -> dict[str, domain.Price]:
    from tests.integration.services.test_order_store import CATALOG

    return dict(CATALOG)


def _draft(request_id: str) -> domain.Draft:
    from tests.integration.services.test_order_store import draft

    return replace(draft(request_id))
