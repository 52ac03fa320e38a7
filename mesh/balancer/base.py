"""The balancer seam: pick an endpoint for one call and hear back how it went.

``pick(endpoints)`` returns the endpoint and a ``done`` callback; the caller reports the
call's :class:`Outcome` through it exactly once. Feedback is what lets least-outstanding,
EWMA latency and outlier ejection work without the balancer knowing anything about grpc
calls, and lets them be tested with plain function calls and a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

import grpc

from mesh.registry.base import Endpoints, ServiceInstance

# Details grpc core puts on UNAVAILABLE when the transport failed, as opposed to a server
# application aborting with UNAVAILABLE (which carries the application's own details).
# "Cancelling all calls" is deliberately absent: that is a server cancelling calls it was
# running when its shutdown grace ran out, so the application did see them.
_TRANSPORT_MARKERS = (
    "failed to connect to all addresses",
    "connection refused",
    "connection reset",
    "socket closed",
    "stream removed",
    "broken pipe",
    "goaway",
    "endpoint closing",
    "transport closed",
    "connection aborted",
)


class Outcome(NamedTuple):
    """How one call on a picked endpoint ended (a tuple: one is built per call, cheaply).

    ``counted`` is False when the outcome says nothing about the endpoint: the caller
    cancelled, the caller's own deadline ran out, or nothing was sent. Such an outcome
    only gives back what the pick took (an outstanding-call slot); it neither fails nor
    clears the endpoint.
    """

    code: grpc.StatusCode
    latency: float = 0.0
    transport_failure: bool = False  # refused/reset: the application may never have seen it
    timed_out: bool = False  # the attempt's own timeout ran out: the endpoint did not answer
    counted: bool = True

    @property
    def gateway_failure(self) -> bool:
        """Counts toward outlier ejection: the endpoint, not the request, looks broken."""
        return self.transport_failure or self.timed_out or self.code is grpc.StatusCode.UNAVAILABLE


def is_transport_failure(code: grpc.StatusCode, details: str | None) -> bool:
    """Whether a call failed in the transport, before any application saw it.

    UNAVAILABLE with grpc core's connection details (refused, reset, GOAWAY), or a bare
    CANCELLED: a server that has begun shutting down cancels the calls that reach it after
    it stopped taking new ones, before any handler runs, and the client sees exactly
    ``CANCELLED``/``"CANCELLED"``. (A caller's own cancellation surfaces as
    ``asyncio.CancelledError``, never as an RpcError, so it cannot be mistaken for this.)
    """
    if not details:
        return False
    if code is grpc.StatusCode.CANCELLED:
        return details == "CANCELLED"
    if code is not grpc.StatusCode.UNAVAILABLE:
        return False
    lowered = details.lower()
    return any(marker in lowered for marker in _TRANSPORT_MARKERS)


Done = Callable[[Outcome], None]


class Picked(NamedTuple):
    """The chosen endpoint and the callback that must receive the call's outcome once."""

    endpoint: ServiceInstance
    done: Done


def ignore_outcome(outcome: Outcome) -> None:
    """A ``done`` for balancers that learn nothing from outcomes."""


class Balancer(Protocol):
    """Chooses an endpoint per call (also called the picker)."""

    def pick(self, endpoints: Endpoints) -> Picked:
        """Choose one of ``endpoints`` (never empty; the caller checks)."""

    def update(self, endpoints: Endpoints) -> None:
        """The endpoint set changed: drop state kept for endpoints no longer present."""
