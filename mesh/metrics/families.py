"""Prometheus families for RPCs, named as go-grpc-prometheus names them, and their labelled children.

Every family lives in a :class:`~prometheus_client.CollectorRegistry` the process creates and
passes in (never the library's global default registry), so two servers in one test process,
or a process that restarts its server, cannot collide. The names are documented in
docs/metrics.md; the label values of ``grpc_type`` are ``unary``, ``client_stream``,
``server_stream`` and ``bidi_stream``; ``grpc_code`` is the status name (``OK``,
``NOT_FOUND``…). Both sides (the server interceptor, the mesh channel's observer) resolve a
method's labelled children once (:class:`MethodMetrics`), so a call costs two counter
increments, one gauge move and one histogram observation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mesh.rpc import Rpc

# prometheus_client's (and go-grpc-prometheus's) default buckets, in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_LABELS = ("grpc_service", "grpc_method", "grpc_type")


@dataclass(frozen=True)
class RpcFamilies:
    """The four families of one side (``server`` or ``client``) of RPCs."""

    started: Counter
    handled: Counter
    seconds: Histogram
    in_flight: Gauge


def rpc_families(registry: CollectorRegistry, side: str) -> RpcFamilies:
    """Register ``grpc_<side>_*`` in ``registry`` (once per registry and side)."""
    verb = "handling" if side == "server" else "completion"
    return RpcFamilies(
        started=Counter(
            f"grpc_{side}_started_total",
            f"RPCs started on the {side}.",
            _LABELS,
            registry=registry,
        ),
        handled=Counter(
            f"grpc_{side}_handled_total",
            f"RPCs completed on the {side}, whatever their status code.",
            (*_LABELS, "grpc_code"),
            registry=registry,
        ),
        seconds=Histogram(
            f"grpc_{side}_handling_seconds",
            f"Time from start to {verb} of RPCs on the {side}.",
            _LABELS,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        in_flight=Gauge(
            f"grpc_{side}_in_flight_calls",
            f"RPCs started but not yet finished on the {side}.",
            _LABELS,
            registry=registry,
        ),
    )


class MethodMetrics:
    """The labelled children of one method on one side, resolved once."""

    __slots__ = ("_families", "_handled", "_labels", "in_flight", "seconds", "started")

    def __init__(self, families: RpcFamilies, rpc: Rpc) -> None:
        self._families = families
        self._labels = (rpc.service, rpc.method, rpc.type)
        self.started = families.started.labels(*self._labels)
        self.seconds = families.seconds.labels(*self._labels)
        self.in_flight = families.in_flight.labels(*self._labels)
        self._handled: dict[grpc.StatusCode, Any] = {}

    def begin(self) -> float:
        self.started.inc()
        self.in_flight.inc()
        return time.perf_counter()

    def end(self, began: float, code: grpc.StatusCode) -> None:
        self.seconds.observe(time.perf_counter() - began)
        self.in_flight.dec()
        handled = self._handled.get(code)
        if handled is None:
            handled = self._handled[code] = self._families.handled.labels(*self._labels, code.name)
        handled.inc()


class MethodCache:
    """Per-interceptor ``Rpc -> MethodMetrics``."""

    __slots__ = ("_families", "_known")

    def __init__(self, families: RpcFamilies) -> None:
        self._families = families
        self._known: dict[Rpc, MethodMetrics] = {}

    def get(self, rpc: Rpc) -> MethodMetrics:
        metrics = self._known.get(rpc)
        if metrics is None:
            metrics = self._known[rpc] = MethodMetrics(self._families, rpc)
        return metrics
