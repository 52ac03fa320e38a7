"""Resilience metrics (``mesh_*``) read from the MeshChannels when Prometheus scrapes.

Why a collector: the counters already live on each channel (:class:`Resilience`, the
outlier detector, the balancer), so reading them at scrape time costs calls nothing, where
counting again per call would not. The collector is also a :class:`~mesh.observer.CallObserver`
that observes no call: ``for_channel`` only remembers the channel (weakly; a closed channel
drops out). Scrapes run on the metrics HTTP thread, so everything read here is a copy or a
side-effect-free peek (:meth:`CircuitBreaker.peek_state`), never a state change.

Names (documented in docs/metrics.md), every family labelled ``target_service``:

    mesh_client_retries_total                    retries the policy sent
    mesh_client_retry_budget_exhausted_total     retries refused by the retry budget
    mesh_client_fail_fast_total                  calls refused by open breakers, never sent
    mesh_circuit_breaker_state{endpoint}         0 closed, 1 half-open, 2 open ("" = service)
    mesh_circuit_breaker_transitions_total{scope,from_state,to_state}
    mesh_outlier_ejections_total                 endpoints ejected by outlier detection
    mesh_outlier_ejected_endpoints               endpoints ejected now
    mesh_endpoints                               endpoints calls are spread over now
    mesh_endpoint_in_flight_calls{endpoint}      attempts in flight per endpoint (P2C's load)
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mesh.balancer.outlier import OutlierBalancer
from mesh.resilience import State

STATE_VALUES = {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}
_SERVICE = ("target_service",)


class ResilienceCollector(Collector):
    """Exports every tracked channel's breakers, retries, budget, ejections and endpoints."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self._channels: weakref.WeakSet[Any] = weakref.WeakSet()
        self._lock = threading.Lock()  # channels are added on the loop, read on the scrape thread
        if registry is not None:
            registry.register(self)

    # -- CallObserver: remember the channel, observe none of its calls ----------------------

    def for_channel(self, channel: Any) -> None:
        self.track(channel)
        return None

    def track(self, channel: Any) -> None:
        """Export ``channel`` (a MeshChannel) until it is closed or collected."""
        with self._lock:
            self._channels.add(channel)

    # -- prometheus_client Collector -------------------------------------------------------

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        retries, exhausted, fail_fast, state, transitions, ejections, ejected, endpoints, in_flight = families
        with self._lock:
            channels = list(self._channels)
        for channel in channels:
            if channel.closed:
                with self._lock:
                    self._channels.discard(channel)
                continue
            service = channel.name
            res = channel.resilience
            retries.add_metric([service], res.retries)
            exhausted.add_metric([service], res.budget_exhausted)
            fail_fast.add_metric([service], res.fail_fast)
            for endpoint, value in res.peek_states().items():
                state.add_metric([service, endpoint], STATE_VALUES[value])
            for (scope, old, new), count in dict(res.transitions).items():
                transitions.add_metric([service, scope, old, new], count)
            current = channel.endpoints
            endpoints.add_metric([service], len(current))
            balancer = channel.balancer
            inner = balancer
            if isinstance(balancer, OutlierBalancer):
                ejections.add_metric([service], balancer.detector.ejections_total)
                ejected.add_metric([service], balancer.detector.ejected_count())
                inner = balancer.inner
            outstanding = getattr(inner, "outstanding", None)
            if callable(outstanding):
                for instance in current:
                    in_flight.add_metric([service, instance.target], outstanding(instance))
        yield from families

    @staticmethod
    def _families() -> tuple[Any, ...]:
        endpoint = (*_SERVICE, "endpoint")
        return (
            CounterMetricFamily("mesh_client_retries", "Retries sent by the retry policy.", labels=_SERVICE),
            CounterMetricFamily(
                "mesh_client_retry_budget_exhausted",
                "Retries the policy allowed but the retry budget refused.",
                labels=_SERVICE,
            ),
            CounterMetricFamily(
                "mesh_client_fail_fast",
                "Calls refused by open circuit breakers without being sent.",
                labels=_SERVICE,
            ),
            GaugeMetricFamily(
                "mesh_circuit_breaker_state",
                'Breaker state: 0 closed, 1 half-open, 2 open; endpoint "" is the service breaker.',
                labels=endpoint,
            ),
            CounterMetricFamily(
                "mesh_circuit_breaker_transitions",
                "Breaker state transitions (scope: service or endpoint).",
                labels=(*_SERVICE, "scope", "from_state", "to_state"),
            ),
            CounterMetricFamily(
                "mesh_outlier_ejections", "Endpoints ejected by outlier detection.", labels=_SERVICE
            ),
            GaugeMetricFamily(
                "mesh_outlier_ejected_endpoints", "Endpoints ejected right now.", labels=_SERVICE
            ),
            GaugeMetricFamily("mesh_endpoints", "Endpoints calls are spread over now.", labels=_SERVICE),
            GaugeMetricFamily(
                "mesh_endpoint_in_flight_calls",
                "Attempts in flight per endpoint (the balancer's outstanding count).",
                labels=endpoint,
            ),
        )
