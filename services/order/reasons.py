"""Why a saga step failed, in stable words: the order's ``status_reason`` and a step's ``detail``.

A participant call fails with whatever the transport said: grpc-core's ``failed to connect
to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50052 ...``, ``Stream removed``, the
mesh's ``no healthy endpoint for 'payment'``, a Python exception's text. None of that is for
the customer who reads the order: it names peers and internals, and changes with library
versions. :func:`step_reason` maps every failure to one of the documented reasons below
(docs/limits.md, "Order status reasons") and logs the original detail with the order id
and the CreateOrder request id, so an operator can still find it.

Only a participant's business refusal (FAILED_PRECONDITION: insufficient stock, payment
declined, destination not supported) keeps the participant's own words: those are the
shop's rules, written for the customer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

import grpc
import grpc.aio

from services.order.participants import FailureKind, StepFailure

log = logging.getLogger(__name__)

# A refusal's message is the participant's, already bounded there; this keeps the order's
# document small whatever a participant says.
MAX_REFUSAL = 300


class ReasonCode(StrEnum):
    """The reason codes, logged as ``reason_code`` and listed in docs/limits.md."""

    DECLINED = "PARTICIPANT_DECLINED"  # a business rule refused: the participant's own words
    REFUSED = "PARTICIPANT_REFUSED"  # refused for another cause (credentials, a malformed call)
    UNAVAILABLE = "PARTICIPANT_UNAVAILABLE"  # the call never ran: down, unreachable, breaker open
    TIMEOUT = "PARTICIPANT_TIMEOUT"  # no answer within the step's time: the outcome is unknown
    FAILED = "PARTICIPANT_FAILED"  # the call broke off or the participant erred: outcome unknown


@dataclass(frozen=True, slots=True)
class Reason:
    code: ReasonCode
    text: str


def step_reason(failure: StepFailure, *, order_id: str, request_id: str = "", step: str = "") -> Reason:
    """The stable reason for ``failure``; the failure's own text goes to the log only."""
    service = failure.service if failure.service.endswith("service") else f"{failure.service} service"
    code = _rpc_code(failure)
    if failure.kind is FailureKind.BUSINESS:
        if code in (None, grpc.StatusCode.FAILED_PRECONDITION):
            reason = Reason(ReasonCode.DECLINED, failure.reason[:MAX_REFUSAL])
        else:
            reason = Reason(ReasonCode.REFUSED, f"{service} refused the request")
    elif failure.kind is FailureKind.UNAVAILABLE:
        reason = Reason(ReasonCode.UNAVAILABLE, f"{service} is unavailable")
    elif code is grpc.StatusCode.DEADLINE_EXCEEDED or (
        code is None and failure.reason == f"{service} did not answer in time"
    ):
        reason = Reason(ReasonCode.TIMEOUT, f"{service} did not answer in time")
    else:
        reason = Reason(ReasonCode.FAILED, f"{service} failed to complete the request")
    log.warning(
        "order step failed",
        extra={
            "order_id": order_id,
            "request_id": request_id,
            "step": step,
            "participant": service,
            "reason_code": reason.code.value,
            "detail": failure.reason,
        },
    )
    return reason


def _rpc_code(failure: StepFailure) -> grpc.StatusCode | None:
    """The status code of the call that failed, when the failure was raised handling one.

    The clients raise StepFailure inside ``except AioRpcError`` (``from None`` hides the
    error from tracebacks, but Python still keeps it as ``__context__``).
    """
    context = failure.__context__
    if isinstance(context, grpc.aio.AioRpcError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else None
    return None
