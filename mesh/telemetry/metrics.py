"""Prometheus metrics for RPCs, named as go-grpc-prometheus names them, and their HTTP endpoint.

Every family lives in a :class:`~prometheus_client.CollectorRegistry` the process creates and
passes in (never the library's global default registry), so two servers in one test process,
or a process that restarts its server, cannot collide. The names are documented in
docs/metrics.md; the label values of ``grpc_type`` are ``unary``, ``client_stream``,
``server_stream`` and ``bidi_stream``; ``grpc_code`` is the status name (``OK``,
``NOT_FOUND``…).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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


class MetricsEndpoint:
    """``/metrics`` (any path, in fact) over HTTP from a background thread.

    ``port`` 0 binds a free port; :attr:`port` is the one bound, which the service publishes
    in its registry meta as ``metrics_port`` so a scraper can find every instance.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port = int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
