"""Runs an order's step table: forward to CONFIRMED, or undone in reverse to CANCELLED.

The orchestrator keeps no state of its own. It reads what to do next from the order's step
history (:func:`domain.remaining`, :func:`domain.to_compensate`) and saves the order after
every step outcome, so running it again on the same order (a re-sent CreateOrder, a
CancelOrder, or later the durable saga log resuming after a crash) carries on where the last
run stopped and never repeats a completed step's effect: participants are called with the
order's deterministic step keys.

The order document is the saga log: each save commits the step's outcome together with the
order's own fields (status, ids, reasons) in one transaction, and a step starts only after the
previous save returned. The save of the last outcome also carries the terminal status
(CONFIRMED after the last forward step, CANCELLED after the last undo): the outcome and the end
of the saga commit together, one transaction per order fewer than a save of their own. A
compensation that fails does not stop the others; the order then keeps its status with a reason
saying what is left, and re-running finishes the job (:mod:`services.order.saga.runner` re-runs
it with backoff and resumes unfinished orders on start).

``checkpoint(phase, name)`` is called at every boundary (``before_commit``/``after_commit``
of a step, ``compensating`` after an undo and before its save): the seam the crash matrix
uses to kill the process there (:mod:`services.order.saga.faults`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from services.common.values import utc_now
from services.order import domain
from services.order.domain import Order, OrderStatus, Outcome
from services.order.participants import FailureKind, Participants, StepFailure
from services.order.reasons import step_reason
from services.order.saga.definition import SagaStep

Save = Callable[[Order], Awaitable[Order]]
Checkpoint = Callable[[str, str], None]
Compensated = Callable[[str, bool], None]  # (the compensation's name, whether it worked): metrics


def _no_checkpoint(phase: str, name: str) -> None:
    """Boundaries are not observed unless a checkpoint is given."""


def _not_counted(name: str, ok: bool) -> None:
    """Compensations are not counted unless asked (the runner gives its saga metrics)."""


class Orchestrator:
    """Drives orders through ``steps``; ``save`` persists (and returns) each new state."""

    def __init__(
        self,
        steps: Sequence[SagaStep],
        save: Save,
        clock: Callable[[], str] = utc_now,
        checkpoint: Checkpoint | None = None,
        compensated: Compensated = _not_counted,
    ) -> None:
        self._steps = tuple(steps)
        self._save = save
        self._clock = clock
        self._checkpoint = checkpoint or _no_checkpoint
        self._compensated = compensated

    async def run(self, order: Order, participants: Participants) -> Order:
        """Carry a PENDING order on: the remaining forward steps, or its compensation."""
        if order.status is OrderStatus.CANCELLED:
            return order
        if order.cancel_reason:
            return await self.compensate(order, participants)
        if order.status is not OrderStatus.PENDING:
            return order
        for step in domain.remaining(self._steps, order):
            try:
                detail = await step.act(participants, order)
            except StepFailure as failure:
                uncertain = failure.kind is FailureKind.UNCERTAIN
                why = step_reason(
                    failure, order_id=order.order_id, request_id=order.request_id, step=step.name
                )
                failed = domain.record(order, step, Outcome.FAILED, why.text, self._clock(), uncertain)
                # The failure and the decision to undo are saved together: a later run compensates.
                order = await self._save(domain.begin_cancel(failed, why.text, self._clock()))
                return await self.compensate(order, participants)
            done = domain.record(order, step, Outcome.COMPLETED, detail, self._clock())
            if not domain.remaining(self._steps, done):
                done = domain.confirm(done, self._steps, self._clock())  # one save ends the saga
            self._checkpoint("before_commit", step.name)
            order = await self._save(done)
            self._checkpoint("after_commit", step.name)
        if order.status is OrderStatus.PENDING:  # nothing was left to do: a run resumed after the last step
            order = await self._save(domain.confirm(order, self._steps, self._clock()))
        return order

    async def cancel(self, order: Order, participants: Participants, reason: str) -> Order:
        """Undo a PENDING or CONFIRMED order; a CANCELLED one is returned unchanged."""
        if order.status is OrderStatus.CANCELLED:
            return order
        if not order.cancel_reason:
            order = await self._save(domain.begin_cancel(order, reason, self._clock()))
        return await self.compensate(order, participants)

    async def compensate(self, order: Order, participants: Participants) -> Order:
        """Undo every completed step in reverse, then CANCELLED (or say what is left)."""
        failures: list[str] = []
        for step in domain.to_compensate(self._steps, order):
            try:
                detail = await step.revert(participants, order)  # to_compensate: undoable steps only
            except StepFailure as failure:
                self._compensated(step.undo or step.name, False)
                why = step_reason(
                    failure, order_id=order.order_id, request_id=order.request_id, step=step.name
                )
                failures.append(f"{step.name}: {why.text}")
                detail = f"compensation failed: {why.text}"
                order = await self._save(domain.record(order, step, Outcome.FAILED, detail, self._clock()))
                continue
            self._compensated(step.undo or step.name, True)
            undone = domain.record(order, step, Outcome.COMPENSATED, detail, self._clock())
            if not failures and not domain.to_compensate(self._steps, undone):
                undone = domain.cancel(undone, self._steps, self._clock())  # one save ends the saga
            self._checkpoint("compensating", step.undo or step.name)
            order = await self._save(undone)
        if order.status is OrderStatus.CANCELLED:
            return order
        if failures:
            return await self._save(domain.stuck(order, failures, self._clock()))
        return await self._save(domain.cancel(order, self._steps, self._clock()))
