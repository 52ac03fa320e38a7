"""The resilience state one MeshChannel keeps for its target service: breakers and budget.

Why on the channel: retries and breakers must see every endpoint of the service, which only
the MeshChannel does (a retry inside a per-endpoint grpc channel stays on the failing
endpoint). One channel per target service per process, so its budget and its service
breaker are the per-service ones; endpoint breakers are keyed by ``host:port``.

Transitions are logged (structured) and counted; :attr:`Resilience.listeners` is the hook
telemetry reads: ``listener(service, endpoint, old, new)`` with ``endpoint`` ``""`` for the
service breaker. The counters are plain attributes so a metrics collector can read them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf import descriptor_pb2, descriptor_pool

from mesh.errors import CircuitOpen
from mesh.resilience import (
    PUSHBACK_METADATA_KEY,
    CallPolicy,
    CircuitBreaker,
    Clock,
    RetryBudget,
    RetryPolicy,
    ServicePolicy,
    State,
    idempotent_level,
)

log = logging.getLogger(__name__)

TransitionListener = Callable[[str, str, State, State], None]
"""``(service, endpoint, old, new)``; endpoint is ``""`` for the service-wide breaker."""

IDEMPOTENCY_KEY_FIELD = "request_id"


def method_idempotent(path: str, pool: descriptor_pool.DescriptorPool | None = None) -> bool:
    """Whether ``/pkg.Service/Method`` is marked IDEMPOTENT or NO_SIDE_EFFECTS in its proto.

    A method the pool does not know (a generic handler, a service whose module was never
    imported) counts as a mutation: unknown is unsafe.
    """
    service, _, name = path.lstrip("/").rpartition("/")
    try:
        method = (pool or descriptor_pool.Default()).FindServiceByName(service).methods_by_name[name]
    except KeyError:
        return False
    level = method.GetOptions().idempotency_level
    return idempotent_level(descriptor_pb2.MethodOptions.IdempotencyLevel.Name(level))


def has_idempotency_key(request: Any) -> bool:
    """Whether the request carries the shop's idempotency key (a non-empty ``request_id``).

    Only ``request_id``: the participants deduplicate re-sends on it. Resource ids chosen by
    the caller (``reservation_id``, ``payment_id``…) make a create collide rather than
    repeat, which is safe for some methods and not others, so they do not count.
    """
    value = getattr(request, IDEMPOTENCY_KEY_FIELD, None)
    return isinstance(value, str) and value != ""


class MethodPolicy:
    """One method's resolved policy: default timeout, retry policy, idempotency."""

    __slots__ = ("idempotent", "retry", "retry_enabled", "timeout")

    def __init__(self, call: CallPolicy, idempotent: bool) -> None:
        self.timeout = call.timeout
        self.retry: RetryPolicy = call.retry
        self.retry_enabled = call.retry.max_attempts > 1
        self.idempotent = idempotent

    def may_repeat(self, request: Any) -> bool:
        """Whether sending ``request`` again cannot apply its effect twice."""
        return self.idempotent or has_idempotency_key(request)


class Resilience:
    """Service breaker, endpoint breakers, retry budget and their counters for one service."""

    def __init__(self, service: str, policy: ServicePolicy | None = None, *, clock: Clock = time.monotonic):
        self.service = service
        self.policy = policy or ServicePolicy()
        self._clock = clock
        self.listeners: list[TransitionListener] = []
        self.transitions: Counter[tuple[str, str, str]] = Counter()  # (scope, old, new)
        self.retries = 0
        self.budget_exhausted = 0
        self.fail_fast = 0
        self.breaker = CircuitBreaker(self.policy.breaker, clock=clock)
        self.breaker.add_listener(self._listener(""))
        self.budget = RetryBudget(self.policy.budget, clock=clock)
        self._endpoints: dict[str, CircuitBreaker] = {}
        self._unsettled: set[str] = set()  # endpoints whose breaker is not CLOSED

    def method(self, path: str) -> MethodPolicy:
        """The resolved policy of ``path`` (built once per stub method by the channel)."""
        return MethodPolicy(self.policy.for_method(path), method_idempotent(path))

    def endpoint_breaker(self, target: str) -> CircuitBreaker:
        """The breaker of one endpoint, created on first use."""
        breaker = self._endpoints.get(target)
        if breaker is None:
            breaker = self._endpoints[target] = CircuitBreaker(self.policy.breaker, clock=self._clock)
            breaker.add_listener(self._listener(target))
        return breaker

    def endpoint_states(self) -> dict[str, State]:
        """Every endpoint breaker's state (for gauges)."""
        return {target: breaker.state for target, breaker in self._endpoints.items()}

    def peek_states(self) -> dict[str, State]:
        """Every breaker's state, ``""`` for the service's, changing nothing (for scrapes).

        Read from the metrics thread: copies the dict first (one atomic step under the GIL)
        and uses :meth:`CircuitBreaker.peek_state`, which never moves a breaker.
        """
        states = {"": self.breaker.peek_state()}
        for target, breaker in dict(self._endpoints).items():
            states[target] = breaker.peek_state()
        return states

    @property
    def unsettled(self) -> bool:
        """Whether some endpoint breaker is not CLOSED (picking must then consult them)."""
        return bool(self._unsettled)

    def blocked(self) -> set[str]:
        """Endpoints whose breaker would refuse a call now; cheap while every breaker is closed."""
        if not self._unsettled:
            return set()
        return {t for t in list(self._unsettled) if not self._endpoints[t].would_allow()}

    def forget(self, keep: set[str]) -> None:
        """Drop breakers of endpoints that left the service (they start afresh if they return)."""
        for target in [t for t in self._endpoints if t not in keep]:
            del self._endpoints[target]
            self._unsettled.discard(target)

    def _listener(self, endpoint: str) -> Callable[[State, State], None]:
        def changed(old: State, new: State) -> None:
            if new is State.CLOSED:
                self._unsettled.discard(endpoint)
            elif endpoint:
                self._unsettled.add(endpoint)
            self.transitions[("endpoint" if endpoint else "service", old.value, new.value)] += 1
            log.warning(
                "circuit breaker %s -> %s",
                old.value,
                new.value,
                extra={
                    "event": "breaker_transition",
                    "target_service": self.service,
                    "endpoint": endpoint or None,
                    "from_state": old.value,
                    "to_state": new.value,
                },
            )
            for listener in self.listeners:
                try:
                    listener(self.service, endpoint, old, new)
                except Exception:  # a broken metrics hook must not break calls
                    log.exception("breaker transition listener %r failed", listener)

        return changed


ATTEMPT_METADATA_KEY = "x-mesh-attempt"


def circuit_open_error(service: str) -> grpc.aio.AioRpcError:
    """The UNAVAILABLE a caller sees when the breakers refuse the call before it is sent."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=str(CircuitOpen(service)),
    )


def pushback_of(error: grpc.aio.AioRpcError) -> str | None:
    """The raw ``grpc-retry-pushback-ms`` trailer of a failed attempt, if the server sent one."""
    for key, value in error.trailing_metadata() or ():
        if key == PUSHBACK_METADATA_KEY:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return None


def with_attempt(metadata: Any, attempt: int) -> tuple[tuple[str, Any], ...]:
    """``metadata`` plus ``x-mesh-attempt``; sent on retries only, absent means attempt 1."""
    return (*tuple(metadata or ()), (ATTEMPT_METADATA_KEY, str(attempt)))


def retry_delay(
    resilience: Resilience,
    policy: MethodPolicy,
    request: Any,
    error: grpc.aio.AioRpcError,
    tries: int,
    deadline: float | None,
) -> float | None:
    """Seconds to wait before retrying after ``error``, or None; takes from the budget if so.

    ``tries`` counts the attempts the retry policy has seen (transparent failover aside).
    Order matters: the budget is only charged for a retry every other rule allows.
    """
    if not policy.retry_enabled:
        return None
    code = error.code().name
    if not policy.retry.retryable(code) or not policy.may_repeat(request):
        return None
    delay = policy.retry.next_delay(tries, code, time.monotonic(), deadline, pushback_of(error))
    if delay is None:
        return None
    if not resilience.budget.try_withdraw():
        resilience.budget_exhausted += 1
        log.debug(
            "retry budget exhausted",
            extra={"event": "retry_budget_exhausted", "target_service": resilience.service},
        )
        return None
    resilience.retries += 1
    return delay
