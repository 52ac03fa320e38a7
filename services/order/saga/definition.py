"""The order saga as data: its steps, in order, each with the participant call that undoes it.

A step names its action and compensation by method reference on the :class:`Participants`
port (``action=Participants.reserve_stock``), not by string or lambda: a typo is an
AttributeError at import and a wrong signature a type error, while the call itself goes to
whatever implementation the saga is given (the gRPC clients, a test's fake). A compensation
that is more than one participant call (:func:`undo_payment`) is a plain function of
``(participants, order)`` and is called as it is.

The rules that read the step history (what is left, what to undo) are in the pure domain
module; this module is only the table and how a step reaches its participant.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields

from services.order.domain import Order, Outcome, StepKeys
from services.order.participants import FailureKind, Participants, StepFailure

Call = Callable[[Participants, Order], Awaitable[str]]
CREATED_IDS = frozenset(f.name for f in fields(StepKeys))


def _port_method(call: Call) -> str:
    """The name of ``call`` when it is a method of the Participants port, else ""."""
    name = getattr(call, "__name__", "")
    return name if getattr(Participants, name, None) is call else ""


async def invoke(call: Call, participants: Participants, order: Order) -> str:
    """Run one step call: a port method on ``participants`` itself, any other call as given.

    A port method reference is the protocol's own (bodiless) function, so it is looked up by
    name on the implementation rather than called.
    """
    name = _port_method(call)
    if name:
        method: Callable[[Order], Awaitable[str]] = getattr(participants, name)
        return await method(order)
    return await call(participants, order)


@dataclass(frozen=True, kw_only=True)
class SagaStep:
    """One step: its action, how to undo it (None: nothing to undo), and which order field
    (an id from :class:`StepKeys`) names what it created."""

    name: str
    action: Call
    compensation: Call | None = None
    sets: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a saga step needs a name")
        if self.sets and self.sets not in CREATED_IDS:
            raise ValueError(f"step {self.name!r}: sets={self.sets!r} is not one of {sorted(CREATED_IDS)}")

    @property
    def undoable(self) -> bool:
        return self.compensation is not None

    @property
    def undo(self) -> str:
        """The compensation's own name, for logs and the crash-matrix fault points ("": none)."""
        return getattr(self.compensation, "__name__", "") if self.compensation else ""

    async def act(self, participants: Participants, order: Order) -> str:
        return await invoke(self.action, participants, order)

    async def revert(self, participants: Participants, order: Order) -> str:
        if self.compensation is None:
            raise TypeError(f"step {self.name!r} has no compensation")
        return await invoke(self.compensation, participants, order)


async def undo_payment(participants: Participants, order: Order) -> str:
    """A captured payment is refunded; an authorization is voided.

    A void refused by the payment service means the payment was captured after all (a
    capture whose answer was lost), so it is refunded instead.
    """
    if order.has("capture_payment", Outcome.COMPLETED):
        return await participants.refund_payment(order)
    try:
        return await participants.void_payment(order)
    except StepFailure as failure:
        if failure.kind is not FailureKind.BUSINESS:
            raise
        return await participants.refund_payment(order)


# Capture and commit have no compensation of their own: undoing the payment refunds a
# captured one, and releasing a reservation also returns committed (sold) stock.
ORDER_STEPS: tuple[SagaStep, ...] = (
    SagaStep(
        name="reserve_stock",
        action=Participants.reserve_stock,
        compensation=Participants.release_stock,
        sets="reservation_id",
    ),
    SagaStep(
        name="authorize_payment",
        action=Participants.authorize_payment,
        compensation=undo_payment,
        sets="payment_id",
    ),
    SagaStep(
        name="schedule_shipment",
        action=Participants.schedule_shipment,
        compensation=Participants.cancel_shipment,
        sets="shipment_id",
    ),
    SagaStep(name="capture_payment", action=Participants.capture_payment),
    SagaStep(name="commit_stock", action=Participants.commit_stock),
)
