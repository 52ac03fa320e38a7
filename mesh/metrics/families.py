"""Prometheus families for RPCs, named as go-grpc-prometheus names them, and their labelled children.

Every family lives in a :class:`~prometheus_client.CollectorRegistry` the process creates and
passes in (never the library's global default registry), so two servers in one test process,
or a process that restarts its server, cannot collide. The names are documented in
docs/metrics.md; the label values of ``grpc_type`` are ``unary``, ``client_stream``,
``server_stream`` and ``bidi_stream``; ``grpc_code`` is the status name (``OK``,
``NOT_FOUND``…). Both sides (the server interceptor, the mesh channel's observer) resolve a
method's numbers once (:class:`MethodMetrics`); a call adds to them, a scrape reads them
(:class:`RpcFamilies`).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from mesh.rpc import Rpc

# prometheus_client's (and go-grpc-prometheus's) default buckets, in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_BOUNDS = (*(repr(float(bound)) for bound in LATENCY_BUCKETS), "+Inf")  # as prometheus_client writes le
_LABELS = ("grpc_service", "grpc_method", "grpc_type")
_perf = time.perf_counter


class MethodMetrics:
    """One method's numbers on one side, in plain Python numbers (see :class:`RpcFamilies`)."""

    __slots__ = ("buckets", "created", "handled", "in_flight", "labels", "seconds_sum", "started")

    def __init__(self, rpc: Rpc) -> None:
        self.labels = (rpc.service, rpc.method, rpc.type)
        self.created = time.time()
        self.started = 0
        self.in_flight = 0
        self.handled: dict[grpc.StatusCode, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # not cumulative; the last is +Inf
        self.seconds_sum = 0.0

    def begin(self) -> float:
        """A call started: counted, in flight; returns the time :meth:`end` wants."""
        self.started += 1
        self.in_flight += 1
        return _perf()

    def end(self, began: float, code: grpc.StatusCode) -> None:
        elapsed = _perf() - began
        self.in_flight -= 1
        self.seconds_sum += elapsed
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, elapsed)] += 1  # le: elapsed <= bound
        self.handled[code] = self.handled.get(code, 0) + 1


class RpcFamilies(Collector):
    """The four families of one side (``server`` or ``client``) of RPCs, read at scrape time.

    Why not prometheus_client's Counter, Gauge and Histogram: each of their updates takes a
    lock and validates its argument, five to six per call on each side (about 75k
    instructions of a server call, bench/server_instructions.py). A call here adds to a few
    plain numbers of its method's :class:`MethodMetrics`; a scrape reads them. Updates happen
    on the event loop's thread only (the server's handlers, the mesh channel's observers); a
    scrape on the HTTP server's thread copies each collection in one step before reading it.
    """

    def __init__(self, side: str) -> None:
        self.side = side
        self._verb = "handling" if side == "server" else "completion"
        self._methods: dict[str, MethodMetrics] = {}  # by path: a str keeps its hash

    def method(self, rpc: Rpc) -> MethodMetrics:
        """``rpc``'s numbers (made on first use and kept)."""
        metrics = self._methods.get(rpc.path)
        if metrics is None:
            metrics = self._methods[rpc.path] = MethodMetrics(rpc)
        return metrics

    def _families(
        self,
    ) -> tuple[CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily, GaugeMetricFamily]:
        side = self.side
        return (
            CounterMetricFamily(f"grpc_{side}_started", f"RPCs started on the {side}.", labels=_LABELS),
            CounterMetricFamily(
                f"grpc_{side}_handled",
                f"RPCs completed on the {side}, whatever their status code.",
                labels=(*_LABELS, "grpc_code"),
            ),
            HistogramMetricFamily(
                f"grpc_{side}_handling_seconds",
                f"Time from start to {self._verb} of RPCs on the {side}.",
                labels=_LABELS,
            ),
            GaugeMetricFamily(
                f"grpc_{side}_in_flight_calls",
                f"RPCs started but not yet finished on the {side}.",
                labels=_LABELS,
            ),
        )

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        started, handled, seconds, in_flight = families = self._families()
        for metrics in list(self._methods.values()):
            labels = metrics.labels
            started.add_metric(labels, metrics.started, created=metrics.created)
            for code, count in list(metrics.handled.items()):
                handled.add_metric((*labels, code.name), count, created=metrics.created)
            cumulative, buckets = 0, []
            for bound, count in zip(_BOUNDS, list(metrics.buckets), strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            seconds.add_metric(labels, buckets, metrics.seconds_sum)
            in_flight.add_metric(labels, metrics.in_flight)
        yield from families


def rpc_families(registry: CollectorRegistry, side: str) -> RpcFamilies:
    """Register ``grpc_<side>_*`` in ``registry`` (once per registry and side)."""
    families = RpcFamilies(side)
    registry.register(families)
    return families
