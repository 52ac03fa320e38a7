"""A participant that cannot be reached yet is waited for, not a reason to cancel the order.

Why: a forward step's UNAVAILABLE ("no healthy endpoint for 'payment'", a refused
connection) says only that *this* attempt never ran. After a crash, the same step may have
run in the previous process (it was in flight when the process died: sent, perhaps done,
never saved). Cancelling then undoes only the steps the order's history shows as completed
and leaves that one behind: a payment AUTHORIZED, a shipment SCHEDULED for a CANCELLED order.
And at start-up, before discovery has endpoints, every resumed saga hits exactly that.

So :class:`WaitingParticipants` turns a forward step's UNAVAILABLE into
:class:`ParticipantNotReady`, which the orchestrator does not catch: the saga stays open and
the runner retries it on the one backoff (:class:`mesh.resilience.Backoff`), re-sending the
step with its deterministic key, which finishes it whether or not it ran before. Only after
``ORDER_SAGA_UNAVAILABLE_WAIT_SECONDS`` of waiting in this process (``give_up``) does the
failure reach the orchestrator, and then as UNCERTAIN: the step may have run, so it is
compensated (idempotently: a void of a payment that was never authorized is a no-op) with
the rest. Compensations pass through unchanged: a failed undo already keeps the saga open.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from services.order.domain import Order
from services.order.participants import FailureKind, Participants, StepFailure


class ParticipantNotReady(Exception):
    """A forward step's participant could not be reached: retry the saga later."""

    def __init__(self, failure: StepFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


class WaitingParticipants:
    """``inner`` with forward steps' UNAVAILABLE raised as :class:`ParticipantNotReady`
    (or, once ``give_up``, as an UNCERTAIN failure the orchestrator compensates)."""

    def __init__(self, inner: Participants, give_up: bool = False) -> None:
        self._inner = inner
        self._give_up = give_up

    async def _forward(self, call: Callable[[Order], Awaitable[str]], order: Order) -> str:
        try:
            return await call(order)
        except StepFailure as failure:
            if failure.kind is not FailureKind.UNAVAILABLE:
                raise
            if not self._give_up:
                raise ParticipantNotReady(failure) from None
            raise StepFailure(FailureKind.UNCERTAIN, failure.service, failure.reason) from failure

    async def reserve_stock(self, order: Order) -> str:
        return await self._forward(self._inner.reserve_stock, order)

    async def authorize_payment(self, order: Order) -> str:
        return await self._forward(self._inner.authorize_payment, order)

    async def schedule_shipment(self, order: Order) -> str:
        return await self._forward(self._inner.schedule_shipment, order)

    async def capture_payment(self, order: Order) -> str:
        return await self._forward(self._inner.capture_payment, order)

    async def commit_stock(self, order: Order) -> str:
        return await self._forward(self._inner.commit_stock, order)

    async def release_stock(self, order: Order) -> str:
        return await self._inner.release_stock(order)

    async def void_payment(self, order: Order) -> str:
        return await self._inner.void_payment(order)

    async def refund_payment(self, order: Order) -> str:
        return await self._inner.refund_payment(order)

    async def cancel_shipment(self, order: Order) -> str:
        return await self._inner.cancel_shipment(order)
