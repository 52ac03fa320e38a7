"""Outlier ejection after Envoy's: take an endpoint out after consecutive gateway failures.

Consul's health check needs up to an interval to notice a dead instance, and a process can
be alive to its health check yet refuse or reset every call. Ejection closes that gap from
the client's own observations: ``consecutive_failures`` connection failures or UNAVAILABLEs
in a row eject an endpoint for ``base_ejection * n`` (n = how often it has been ejected,
capped at ``max_ejection``). At most ``max_ejected_share`` of the endpoints are ejected at
once (at least one), and when fewer than ``panic_threshold`` of them are left, all are used:
a struggling endpoint beats none. Time comes from an injectable clock so tests are exact.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from mesh.balancer.base import Balancer, Outcome, Picked
from mesh.registry.base import Endpoints, ServiceInstance


@dataclass(frozen=True)
class OutlierPolicy:
    """Ejection thresholds; defaults are Envoy's (5, 30 s x n, 300 s, 10 %, panic below 50 %)."""

    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejected_share: float = 0.10
    panic_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError("consecutive_failures must be >= 1")
        if not 0 < self.base_ejection <= self.max_ejection:
            raise ValueError("need 0 < base_ejection <= max_ejection")
        if not 0 <= self.max_ejected_share <= 1 or not 0 <= self.panic_threshold <= 1:
            raise ValueError("max_ejected_share and panic_threshold must be within 0..1")


_OK = grpc.StatusCode.OK


class _Host:
    __slots__ = ("consecutive", "ejected_until", "ejections", "returned_at")

    def __init__(self) -> None:
        self.consecutive = 0
        self.ejections = 0
        self.ejected_until = 0.0
        self.returned_at: float | None = None


class OutlierDetector:
    """Tracks consecutive gateway failures per endpoint and decides who is ejected."""

    def __init__(
        self, policy: OutlierPolicy | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or OutlierPolicy()
        self._clock = clock
        self._hosts: dict[str, _Host] = {}
        self._ejected: dict[str, _Host] = {}
        self._size = 0  # size of the endpoint set last seen, for the max-share rule
        self.ejections_total = 0  # every ejection so far (read by the metrics collector)

    def ejected_count(self) -> int:
        """How many endpoints are ejected now, changing nothing (safe from a scrape thread)."""
        now = self._clock()
        return sum(1 for host in list(self._ejected.values()) if now < host.ejected_until)

    def ejected(self) -> frozenset[str]:
        """Targets ejected right now."""
        self._release(self._clock())
        return frozenset(self._ejected)

    def available(self, endpoints: Endpoints) -> Endpoints:
        """``endpoints`` minus the ejected ones, or all of them in panic mode."""
        self._size = len(endpoints)
        if not self._ejected:
            return endpoints
        self._release(self._clock())
        healthy = tuple(e for e in endpoints if e.target not in self._ejected)
        if not healthy or len(healthy) < self.policy.panic_threshold * len(endpoints):
            return endpoints
        return healthy

    def record(self, endpoint: ServiceInstance, outcome: Outcome) -> None:
        """Feed one call's outcome; the ``consecutive_failures``-th gateway failure ejects."""
        target = endpoint.target
        if outcome.code is _OK:  # the common case, kept short: only a running count resets
            host = self._hosts.get(target)
            if host is not None:
                host.consecutive = 0
            return
        if not outcome.counted:
            return  # the caller's cancel or deadline: says nothing about the endpoint
        ejected = self._ejected.get(target)
        if ejected is not None:
            now = self._clock()
            if now < ejected.ejected_until:
                return  # traffic reached it only through panic mode; its sentence stands
            self._release(now)
        host = self._hosts.get(target)
        if host is None:
            host = self._hosts[target] = _Host()
        if not outcome.gateway_failure:
            host.consecutive = 0
            return
        host.consecutive += 1
        if host.consecutive >= self.policy.consecutive_failures:
            self._eject(target, host, self._clock())

    def _eject(self, target: str, host: _Host, now: float) -> None:
        self._release(now)
        limit = max(1, math.floor(self.policy.max_ejected_share * (self._size or len(self._hosts))))
        if len(self._ejected) >= limit:
            return  # no room: the count stays, so it is ejected as soon as there is
        if host.returned_at is not None:
            # Every base period spent back in service forgives one earlier ejection.
            healthy_for = now - host.returned_at
            host.ejections = max(0, host.ejections - int(healthy_for // self.policy.base_ejection))
        host.ejections += 1
        duration = min(self.policy.base_ejection * host.ejections, self.policy.max_ejection)
        host.ejected_until = now + duration
        host.consecutive = 0
        self._ejected[target] = host
        self.ejections_total += 1

    def _release(self, now: float) -> None:
        for target, host in list(self._ejected.items()):
            if now >= host.ejected_until:
                del self._ejected[target]
                host.returned_at = host.ejected_until
                host.consecutive = 0

    def update(self, endpoints: Endpoints) -> None:
        """Forget endpoints that left the set."""
        keep = {endpoint.target for endpoint in endpoints}
        self._size = len(endpoints)
        for target in [t for t in self._hosts if t not in keep]:
            del self._hosts[target]
            self._ejected.pop(target, None)


class OutlierBalancer:
    """Wraps a balancer so it only sees endpoints the detector has not ejected."""

    def __init__(self, inner: Balancer, detector: OutlierDetector | None = None) -> None:
        self.inner = inner
        self.detector = detector or OutlierDetector()

    def pick(self, endpoints: Endpoints) -> Picked:
        """Pick among the non-ejected endpoints and report the outcome to both layers."""
        endpoint, inner_done = self.inner.pick(self.detector.available(endpoints))
        record = self.detector.record

        def done(outcome: Outcome) -> None:
            inner_done(outcome)
            record(endpoint, outcome)

        return Picked(endpoint, done)

    def update(self, endpoints: Endpoints) -> None:
        """Propagate an endpoint-set change to the detector and the inner balancer."""
        self.detector.update(endpoints)
        self.inner.update(endpoints)
