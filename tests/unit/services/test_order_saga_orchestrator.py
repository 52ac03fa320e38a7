"""The orchestrator against in-memory participants: step order, reverse compensation, re-runs.

The fake participants keep real (tiny) state keyed by the order's step keys, the way the real
services do, so a test can tell "called twice" from "had two effects".
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.order import domain
from services.order.domain import Address, Line, Order, OrderStatus, Outcome, Price
from services.order.participants import FailureKind, StepFailure
from services.order.saga.definition import ORDER_STEPS
from services.order.saga.orchestrator import Orchestrator

NOW = "2025-01-01T00:00:00.000000+00:00"
FORWARD = ["reserve_stock", "authorize_payment", "schedule_shipment", "capture_payment", "commit_stock"]


class FakeParticipants:
    """Records every call; ``fail`` maps an operation to the failure it raises (every time)."""

    def __init__(self, **fail: StepFailure) -> None:
        self.fail = dict(fail)
        self.calls: list[str] = []
        self.stock: dict[str, str] = {}  # reservation id -> HELD / COMMITTED / RELEASED
        self.payments: dict[str, str] = {}  # payment id -> AUTHORIZED / CAPTURED / VOIDED / REFUNDED
        self.shipments: dict[str, str] = {}

    def _enter(self, name: str) -> None:
        self.calls.append(name)
        if name in self.fail:
            raise self.fail[name]

    async def reserve_stock(self, order: Order) -> str:
        self._enter("reserve_stock")
        self.stock.setdefault(order.keys.reservation_id, "HELD")
        return "held"

    async def release_stock(self, order: Order) -> str:
        self._enter("release_stock")
        if order.keys.reservation_id in self.stock:
            self.stock[order.keys.reservation_id] = "RELEASED"
        return "released"

    async def commit_stock(self, order: Order) -> str:
        self._enter("commit_stock")
        self.stock[order.keys.reservation_id] = "COMMITTED"
        return "committed"

    async def authorize_payment(self, order: Order) -> str:
        self._enter("authorize_payment")
        self.payments.setdefault(order.keys.payment_id, "AUTHORIZED")
        return "authorized"

    async def capture_payment(self, order: Order) -> str:
        self._enter("capture_payment")
        self.payments[order.keys.payment_id] = "CAPTURED"
        return "captured"

    async def void_payment(self, order: Order) -> str:
        self._enter("void_payment")
        if self.payments.get(order.keys.payment_id) == "CAPTURED":
            raise StepFailure(FailureKind.BUSINESS, "payment service", "captured payments cannot be voided")
        if order.keys.payment_id in self.payments:
            self.payments[order.keys.payment_id] = "VOIDED"
        return "voided"

    async def refund_payment(self, order: Order) -> str:
        self._enter("refund_payment")
        self.payments[order.keys.payment_id] = "REFUNDED"
        return "refunded"

    async def schedule_shipment(self, order: Order) -> str:
        self._enter("schedule_shipment")
        self.shipments.setdefault(order.keys.shipment_id, "SCHEDULED")
        return "scheduled"

    async def cancel_shipment(self, order: Order) -> str:
        self._enter("cancel_shipment")
        if order.keys.shipment_id in self.shipments:
            self.shipments[order.keys.shipment_id] = "CANCELLED"
        return "cancelled"


class MemoryStore:
    """Keeps the last saved order; ``crash_after`` makes the n-th save raise (a crash)."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.saved: list[Order] = []
        self.crash_after = crash_after

    async def save(self, order: Order) -> Order:
        if self.crash_after is not None and len(self.saved) >= self.crash_after:
            raise SystemExit("crash")
        order = replace(order, version=order.version + 1)
        self.saved.append(order)
        return order

    @property
    def last(self) -> Order:
        return self.saved[-1]


def new_order() -> Order:
    draft = domain.validate_create([Line("TEA", 2)], Address("Ada", "1 St", "Tokyo", "100", "JP"), "req-1")
    return domain.new_order("ord_1", "u-1", draft, {"TEA": Price(1250, "EUR")}, NOW)


def refusal(reason: str) -> StepFailure:
    return StepFailure(FailureKind.BUSINESS, "someone", reason)


def saga(store: MemoryStore) -> Orchestrator:
    return Orchestrator(ORDER_STEPS, store.save, clock=lambda: NOW)


async def test_happy_path_runs_every_step_in_order_and_saves_after_each() -> None:
    store, fake = MemoryStore(), FakeParticipants()
    order = await saga(store).run(new_order(), fake)
    assert fake.calls == FORWARD
    assert order.status is OrderStatus.CONFIRMED
    assert [(s.name, s.outcome) for s in order.steps] == [(n, Outcome.COMPLETED) for n in FORWARD]
    # One save per step; the last step's save also confirms the order (no save of its own).
    assert [len(o.steps) for o in store.saved] == [1, 2, 3, 4, 5]
    assert [o.status for o in store.saved] == [OrderStatus.PENDING] * 4 + [OrderStatus.CONFIRMED]
    assert fake.stock == {"ord_1.reserve": "COMMITTED"} and fake.payments == {"ord_1.pay": "CAPTURED"}
    assert (order.reservation_id, order.payment_id, order.shipment_id) == (
        "ord_1.reserve",
        "ord_1.pay",
        "ord_1.ship",
    )


@pytest.mark.parametrize(
    ("failing", "compensations"),
    [
        ("reserve_stock", []),
        ("authorize_payment", ["release_stock"]),
        ("schedule_shipment", ["void_payment", "release_stock"]),
        ("capture_payment", ["cancel_shipment", "void_payment", "release_stock"]),
        ("commit_stock", ["cancel_shipment", "refund_payment", "release_stock"]),
    ],
)
async def test_a_refusal_at_each_position_undoes_completed_steps_in_reverse(
    failing: str, compensations: list[str]
) -> None:
    store, fake = MemoryStore(), FakeParticipants(**{failing: refusal(f"{failing} said no")})
    order = await saga(store).run(new_order(), fake)
    done = FORWARD[: FORWARD.index(failing)]
    assert fake.calls == [*done, failing, *compensations]
    assert (order.status, order.status_reason) == (OrderStatus.CANCELLED, f"{failing} said no")
    outcomes = [(s.name, s.outcome) for s in order.steps]
    assert outcomes[: len(done) + 1] == [*((n, Outcome.COMPLETED) for n in done), (failing, Outcome.FAILED)]
    assert all(o is Outcome.COMPENSATED for _, o in outcomes[len(done) + 1 :])
    assert set(fake.stock.values()) <= {"RELEASED"} and set(fake.payments.values()) <= {"VOIDED", "REFUNDED"}
    assert set(fake.shipments.values()) <= {"CANCELLED"}
    assert store.last == order
    # A save per outcome (the refusal's with the decision to undo); the last undo's save, or
    # the refusal's own save's successor when nothing was done, also cancels the order.
    assert len(store.saved) == len(done) + 1 + (len(compensations) or 1)
    assert [o.status for o in store.saved].count(OrderStatus.CANCELLED) == 1


async def test_an_unavailable_participant_is_not_undone_but_a_timed_out_one_is() -> None:
    down = FakeParticipants(authorize_payment=StepFailure(FailureKind.UNAVAILABLE, "payment service", "down"))
    order = await saga(MemoryStore()).run(new_order(), down)
    assert down.calls == ["reserve_stock", "authorize_payment", "release_stock"]
    assert order.status_reason == "payment service is unavailable"  # services/order/reasons.py

    slow = FakeParticipants(
        authorize_payment=StepFailure(FailureKind.UNCERTAIN, "payment service", "timeout")
    )
    order = await saga(MemoryStore()).run(new_order(), slow)
    assert slow.calls == ["reserve_stock", "authorize_payment", "void_payment", "release_stock"]
    assert order.status is OrderStatus.CANCELLED


async def test_a_failed_compensation_leaves_the_order_pending_and_a_rerun_finishes_it() -> None:
    store = MemoryStore()
    fake = FakeParticipants(
        schedule_shipment=refusal("destination not supported"),
        void_payment=StepFailure(FailureKind.UNAVAILABLE, "payment service", "payment service is down"),
    )
    stuck = await saga(store).run(new_order(), fake)
    assert fake.calls[-2:] == ["void_payment", "release_stock"]  # one failure does not stop the rest
    assert stuck.status is OrderStatus.PENDING
    assert "destination not supported" in stuck.status_reason and "payment service" in stuck.status_reason
    assert fake.stock == {"ord_1.reserve": "RELEASED"} and fake.payments == {"ord_1.pay": "AUTHORIZED"}

    del fake.fail["void_payment"]
    fake.calls.clear()
    order = await saga(store).run(store.last, fake)
    assert fake.calls == ["void_payment"]  # the stock was released already; only the payment is left
    assert (order.status, order.status_reason) == (OrderStatus.CANCELLED, "destination not supported")
    assert fake.payments == {"ord_1.pay": "VOIDED"}


async def test_rerunning_a_terminal_order_calls_nobody() -> None:
    fake = FakeParticipants()
    confirmed = await saga(MemoryStore()).run(new_order(), fake)
    cancelled = await saga(MemoryStore()).run(
        new_order(), FakeParticipants(reserve_stock=refusal("no stock"))
    )
    fake.calls.clear()
    assert await saga(MemoryStore()).run(confirmed, fake) == confirmed
    assert await saga(MemoryStore()).run(cancelled, fake) == cancelled
    assert fake.calls == []


@pytest.mark.parametrize("crash_after", range(1, len(FORWARD)))  # the fifth save confirms
async def test_a_run_stopped_after_any_save_resumes_without_repeating_effects(crash_after: int) -> None:
    fake, crashing = FakeParticipants(), MemoryStore(crash_after=crash_after)
    with pytest.raises(SystemExit):
        await saga(crashing).run(new_order(), fake)
    resumed_from = crashing.last
    fake.calls.clear()
    order = await saga(MemoryStore()).run(resumed_from, fake)
    # The step whose save was lost is sent again (its key makes that safe), nothing before it.
    assert fake.calls == FORWARD[crash_after:]
    assert order.status is OrderStatus.CONFIRMED
    assert fake.stock == {"ord_1.reserve": "COMMITTED"} and fake.payments == {"ord_1.pay": "CAPTURED"}


async def test_a_run_resumed_after_every_step_was_saved_only_confirms() -> None:
    """An order whose last outcome was saved without the confirmation (as saves were made
    before the two shared one) is confirmed by one save, and nobody is called again."""
    done = new_order()
    for step in ORDER_STEPS:
        done = domain.record(done, step, Outcome.COMPLETED, "done", NOW)
    store, fake = MemoryStore(), FakeParticipants()
    order = await saga(store).run(done, fake)
    assert fake.calls == []
    assert order.status is OrderStatus.CONFIRMED and len(store.saved) == 1


async def test_cancelling_a_confirmed_order_refunds_and_returns_everything() -> None:
    fake = FakeParticipants()
    confirmed = await saga(MemoryStore()).run(new_order(), fake)
    fake.calls.clear()
    order = await saga(MemoryStore()).cancel(confirmed, fake, domain.CANCELLED_BY_CUSTOMER)
    assert fake.calls == ["cancel_shipment", "refund_payment", "release_stock"]
    assert (order.status, order.status_reason) == (OrderStatus.CANCELLED, "cancelled by customer")
    assert fake.payments == {"ord_1.pay": "REFUNDED"} and fake.stock == {"ord_1.reserve": "RELEASED"}
    fake.calls.clear()
    assert await saga(MemoryStore()).cancel(order, fake, "again") == order
    assert fake.calls == []


async def test_cancelling_a_pending_order_compensates_what_it_did() -> None:
    fake, store = FakeParticipants(), MemoryStore(crash_after=2)
    with pytest.raises(SystemExit):
        await saga(store).run(new_order(), fake)  # reserved and authorized, then the runner died
    fake.calls.clear()
    order = await saga(MemoryStore()).cancel(store.last, fake, domain.CANCELLED_BY_CUSTOMER)
    assert fake.calls == ["void_payment", "release_stock"]
    assert order.status is OrderStatus.CANCELLED
