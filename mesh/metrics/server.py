"""Server RPC metrics: ``grpc_server_started_total``, ``_handled_total``, ``_handling_seconds``.

Counts every call including health checks (go-grpc-prometheus does too: Consul's probes show
up as ``grpc.health.v1.Health/Check``, which is itself a useful liveness signal). The labelled
numbers of a method are made once and kept (:meth:`~mesh.metrics.families.RpcFamilies.method`).
"""

from __future__ import annotations

import grpc
import grpc.aio

from mesh.metrics.families import MethodMetrics, RpcFamilies
from mesh.rpc import Rpc, RpcCache
from mesh.server.wrap import Context, Continuation, Start, scope_of, wrap_handler


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
        self._families = families
        self._rpcs = RpcCache()

    def _start(self, rpc: Rpc, context: Context) -> _ServerCall:
        return _ServerCall(self._families.method(rpc))

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return self.wrap_handler(handler_call_details.method, await continuation(handler_call_details))

    def scope_for(self, method: str) -> Start | None:
        """This layer's scope for a call of ``method`` (mesh.server.wrap.ScopeLayer)."""
        return scope_of(method, self._start)

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        return wrap_handler(method, handler, self._rpcs, self._start)
