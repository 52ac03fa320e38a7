"""The order saga's step table: its order, its undos, and how a step reaches its participant."""

from __future__ import annotations

import pytest

from services.order.domain import Order
from services.order.participants import FailureKind, Participants, StepFailure
from services.order.saga.definition import ORDER_STEPS, SagaStep, undo_payment
from tests.unit.services.test_order_domain import order_with
from tests.unit.services.test_order_saga_orchestrator import FakeParticipants

STEP = {s.name: s for s in ORDER_STEPS}


def test_the_step_table_runs_in_the_agreed_order() -> None:
    names = [s.name for s in ORDER_STEPS]
    assert names == [
        "reserve_stock",
        "authorize_payment",
        "schedule_shipment",
        "capture_payment",
        "commit_stock",
    ]
    assert [s.name for s in ORDER_STEPS if not s.undoable] == ["capture_payment", "commit_stock"]


def test_each_undo_is_named_after_its_compensation() -> None:
    undos = {s.name: s.undo for s in ORDER_STEPS}
    assert undos == {
        "reserve_stock": "release_stock",
        "authorize_payment": "undo_payment",
        "schedule_shipment": "cancel_shipment",
        "capture_payment": "",
        "commit_stock": "",
    }


async def test_a_method_reference_calls_the_implementation_given_to_the_step() -> None:
    fake = FakeParticipants()
    order = order_with()
    assert await STEP["reserve_stock"].act(fake, order) == "held"
    assert await STEP["reserve_stock"].revert(fake, order) == "released"
    assert fake.calls == ["reserve_stock", "release_stock"]
    assert fake.stock == {"ord_1.reserve": "RELEASED"}


async def test_a_step_without_compensation_cannot_be_reverted() -> None:
    with pytest.raises(TypeError, match="commit_stock"):
        await STEP["commit_stock"].revert(FakeParticipants(), order_with())


def test_a_step_may_only_fill_in_an_id_the_order_has() -> None:
    with pytest.raises(ValueError, match="sets='payment'"):
        SagaStep(name="pay", action=Participants.authorize_payment, sets="payment")
    with pytest.raises(ValueError, match="needs a name"):
        SagaStep(name="", action=Participants.commit_stock)


class PaymentFake:
    def __init__(self, void_refused: bool = False) -> None:
        self.calls: list[str] = []
        self.void_refused = void_refused

    async def void_payment(self, order: Order) -> str:
        self.calls.append("void")
        if self.void_refused:
            raise StepFailure(FailureKind.BUSINESS, "payment service", "a captured payment cannot be voided")
        return "voided"

    async def refund_payment(self, order: Order) -> str:
        self.calls.append("refund")
        return "refunded"


@pytest.mark.parametrize(
    ("completed", "void_refused", "calls"),
    [
        (("authorize_payment",), False, ["void"]),
        (("authorize_payment", "capture_payment"), False, ["refund"]),
        (("authorize_payment",), True, ["void", "refund"]),
    ],
)
async def test_undoing_a_payment_voids_or_refunds(
    completed: tuple[str, ...], void_refused: bool, calls: list[str]
) -> None:
    fake = PaymentFake(void_refused)
    await undo_payment(fake, order_with(*completed))  # type: ignore[arg-type]
    assert fake.calls == calls


async def test_a_payment_void_that_never_ran_is_not_turned_into_a_refund() -> None:
    class Down(PaymentFake):
        async def void_payment(self, order: Order) -> str:
            self.calls.append("void")
            raise StepFailure(FailureKind.UNAVAILABLE, "payment service", "payment service is unavailable")

    fake = Down()
    with pytest.raises(StepFailure, match="unavailable"):
        await undo_payment(fake, order_with("authorize_payment"))  # type: ignore[arg-type]
    assert fake.calls == ["void"]
