"""A forward step whose participant is unreachable waits; only a long outage cancels the order,
and then the step is undone as possibly done.

The step may have run in a process that crashed with it in flight: the saga runner re-sends it
(by its key) until the participant answers, on the one backoff; past
``unavailable_wait_seconds`` the order is cancelled and that step compensated with the rest.
"""

from __future__ import annotations

import asyncio

from services.common.database import Database
from services.order import domain
from services.order.domain import OrderStatus, Outcome
from services.order.participants import FailureKind, StepFailure
from services.order.saga.definition import ORDER_STEPS
from services.order.saga.runner import SagaRunner, SagaSettings
from services.order.store import OrderStore
from tests.integration.services.test_order_store import database, make_order  # noqa: F401 - fixture
from tests.support.waiting import wait_until
from tests.unit.services.test_order_saga_orchestrator import FakeParticipants

DOWN = StepFailure(FailureKind.UNAVAILABLE, "payment service", "no healthy endpoint for 'payment'")
T = "2025-01-01T00:00:01.000000+00:00"


def settings(wait: float) -> SagaSettings:
    return SagaSettings(
        lease_seconds=0.5, retry_base_seconds=0.01, retry_max_seconds=0.02, unavailable_wait_seconds=wait
    )


async def resumed(store: OrderStore, order_id: str) -> str:
    """An order whose stock step completed and whose authorization was in flight at a crash."""
    order, _ = await store.create(make_order(order_id))
    await store.save(domain.record(order, ORDER_STEPS[0], Outcome.COMPLETED, "held", T))
    return order.order_id


async def test_an_unreachable_participant_is_waited_for_and_the_step_finished(database: Database) -> None:  # noqa: F811
    store = OrderStore(database)
    order_id = await resumed(store, "ord_wait")
    fake = FakeParticipants(authorize_payment=DOWN)
    fake.payments[f"{order_id}.pay"] = "AUTHORIZED"  # the in-flight call had happened
    runner = SagaRunner(store, ORDER_STEPS, lambda order: None, settings(wait=30))
    task = runner.submit(order_id, lambda: fake)
    await wait_until(lambda: fake.calls.count("authorize_payment") >= 5, 10, "the runner's retries")
    assert not task.done() and (await store.get(order_id)).status is OrderStatus.PENDING
    assert "release_stock" not in fake.calls
    fake.fail.clear()  # discovery found payment
    finished = await asyncio.wait_for(task, 10)
    assert finished is not None and finished.status is OrderStatus.CONFIRMED
    assert fake.payments == {f"{order_id}.pay": "CAPTURED"}
    await runner.close()


async def test_a_long_outage_cancels_and_undoes_the_uncertain_step_too(database: Database) -> None:  # noqa: F811
    store = OrderStore(database)
    order_id = await resumed(store, "ord_gone")
    fake = FakeParticipants(authorize_payment=DOWN)
    fake.payments[f"{order_id}.pay"] = "AUTHORIZED"
    fake.stock[f"{order_id}.reserve"] = "HELD"
    runner = SagaRunner(store, ORDER_STEPS, lambda order: None, settings(wait=0.2))
    finished = await asyncio.wait_for(runner.submit(order_id, lambda: fake), 10)
    assert finished is not None and finished.status is OrderStatus.CANCELLED
    assert fake.calls[-2:] == ["void_payment", "release_stock"]  # the in-flight step undone too
    assert fake.payments == {f"{order_id}.pay": "VOIDED"}
    assert fake.stock == {f"{order_id}.reserve": "RELEASED"}
    assert finished.uncertain("authorize_payment")
    await runner.close()
