"""Server RPC metrics: ``grpc_server_started_total``, ``_handled_total``, ``_handling_seconds``.

Counts every call including health checks (go-grpc-prometheus does too: Consul's probes show
up as ``grpc.health.v1.Health/Check``, which is itself a useful liveness signal). The labelled
children of a method are resolved once and kept, so a call costs two counter increments, one
gauge move and one histogram observation.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import grpc.aio

from mesh.interceptors.rpc import Rpc, RpcCache
from mesh.interceptors.server_wrap import Context, Continuation, wrap_service
from mesh.telemetry.metrics import RpcFamilies


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


class _ServerCall:
    __slots__ = ("_began", "_metrics")

    def __init__(self, metrics: MethodMetrics) -> None:
        self._metrics = metrics
        self._began = metrics.begin()

    def done(self, code: grpc.StatusCode) -> None:
        self._metrics.end(self._began, code)


class MetricsServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped (Any) for mypy
    """Counts and times every call the server handles."""

    def __init__(self, families: RpcFamilies) -> None:
        self._methods = MethodCache(families)
        self._rpcs = RpcCache()

    def _start(self, rpc: Rpc, context: Context) -> _ServerCall:
        return _ServerCall(self._methods.get(rpc))

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return await wrap_service(continuation, handler_call_details, self._rpcs, self._start)
