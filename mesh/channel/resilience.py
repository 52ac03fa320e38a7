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

from google.protobuf import descriptor_pb2, descriptor_pool

from mesh.resilience import (
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
    """One method's resolved policy: default timeout, retry policy, idempotency.

    ``idempotent`` is the proto's word (:func:`method_idempotent`); the policy's own
    ``idempotent`` key, when set, wins over it either way.
    """

    __slots__ = ("idempotent", "retry", "retry_enabled", "timeout")

    def __init__(self, call: CallPolicy, idempotent: bool) -> None:
        self.timeout = call.timeout
        self.retry: RetryPolicy = call.retry
        self.retry_enabled = call.retry.max_attempts > 1
        self.idempotent = idempotent if call.idempotent is None else call.idempotent

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
        self.breaker.add_listener(self._listener("", self.breaker))
        self.budget = RetryBudget(self.policy.budget, clock=clock)
        # Plain attributes read on every call's hot path (a property costs a Python call):
        self.breakers: dict[str, CircuitBreaker] = {}  # per endpoint, created on first use
        self.unsettled: set[str] = set()  # endpoints whose breaker is not CLOSED; empty: skip them

    def method(self, path: str) -> MethodPolicy:
        """The resolved policy of ``path`` (built once per stub method by the channel)."""
        return MethodPolicy(self.policy.for_method(path), method_idempotent(path))

    def endpoint_breaker(self, target: str) -> CircuitBreaker:
        """The breaker of one endpoint, created on first use."""
        breaker = self.breakers.get(target)
        if breaker is None:
            breaker = self.breakers[target] = CircuitBreaker(self.policy.breaker, clock=self._clock)
            breaker.add_listener(self._listener(target, breaker))
        return breaker

    def endpoint_states(self) -> dict[str, State]:
        """Every endpoint breaker's state (for gauges)."""
        return {target: breaker.state for target, breaker in self.breakers.items()}

    def peek_states(self) -> dict[str, State]:
        """Every breaker's state, ``""`` for the service's, changing nothing (for scrapes).

        Read from the metrics thread: copies the dict first (one atomic step under the GIL)
        and uses :meth:`CircuitBreaker.peek_state`, which never moves a breaker.
        """
        states = {"": self.breaker.peek_state()}
        for target, breaker in dict(self.breakers).items():
            states[target] = breaker.peek_state()
        return states

    def blocked(self) -> set[str]:
        """Endpoints whose breaker would refuse a call now; cheap while every breaker is closed."""
        if not self.unsettled:
            return set()
        endpoints = self.breakers
        return {t for t in list(self.unsettled) if t in endpoints and not endpoints[t].would_allow()}

    def forget(self, keep: set[str]) -> None:
        """Drop breakers of endpoints that left the service (they start afresh if they return)."""
        for target in [t for t in self.breakers if t not in keep]:
            del self.breakers[target]
            self.unsettled.discard(target)

    def _listener(self, endpoint: str, breaker: CircuitBreaker) -> Callable[[State, State], None]:
        def changed(old: State, new: State) -> None:
            if endpoint and self.breakers.get(endpoint) is not breaker:
                # The endpoint left (or left and came back with a fresh breaker) while a call
                # to it was in flight: that call's outcome moved a breaker nobody consults.
                return
            if new is State.CLOSED:
                self.unsettled.discard(endpoint)
            elif endpoint:
                self.unsettled.add(endpoint)
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
