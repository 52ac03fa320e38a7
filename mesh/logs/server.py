"""One JSON log line per RPC the server handled (health checks excepted).

Fields: ``rpc_service``, ``method``, ``code``, ``duration_ms``, ``peer``, plus ``trace_id`` and
``span_id`` when a span is current (this interceptor sits inside the tracing one, so the
server span is still current when the line is written). The process's own name is the
formatter's ``service`` field. Logged on logger ``mesh.rpc`` at INFO for OK and WARNING
otherwise, so ``MESH_LOG_LEVEL=WARNING`` keeps only failed calls and ``ERROR`` silences the
lines (the interceptor then costs one ``isEnabledFor`` check per call). The level is checked
before a line's fields are gathered, so an OK call at WARNING costs the check and the timer.
"""

from __future__ import annotations

import logging
import time

import grpc
import grpc.aio

from mesh.logs.setup import direct_handler, trace_ids
from mesh.rpc import Rpc, RpcCache
from mesh.server.wrap import Context, Continuation, Start, scope_of, wrap_handler

RPC_LOGGER = "mesh.rpc"
_LINE = 0  # the records' lineno: there is one place that logs


class _LoggedCall:
    __slots__ = ("_began", "_context", "_log", "_rpc")

    def __init__(self, log: logging.Logger, rpc: Rpc, context: Context) -> None:
        self._log = log
        self._rpc = rpc
        self._context = context
        self._began = time.perf_counter()

    def done(self, code: grpc.StatusCode) -> None:
        level = logging.INFO if code is grpc.StatusCode.OK else logging.WARNING
        if not self._log.isEnabledFor(level):  # at WARNING an OK call builds no line at all
            return
        elapsed_ms = (time.perf_counter() - self._began) * 1000.0
        fields: dict[str, object] = {
            "event": "rpc",
            "rpc_service": self._rpc.service,
            "method": self._rpc.method,
            "code": code.name,
            "duration_ms": round(elapsed_ms, 3),
            "peer": self._context.peer(),
        }
        fields.update(trace_ids())
        log = self._log
        handler = direct_handler(log, level)
        if handler is not None:  # the same line, without a LogRecord (mesh.logs.setup)
            handler.write(level, log.name, f"{self._rpc.service}/{self._rpc.method} {code.name}", fields)
            return
        # Made and handled here rather than through Logger.log, which would walk the stack to
        # find its caller (always this line) for every call's line.
        args = (self._rpc.service, self._rpc.method, code.name)
        log.handle(log.makeRecord(log.name, level, __file__, _LINE, "%s/%s %s", args, None, "done", fields))


class _Silent:
    __slots__ = ()

    def done(self, code: grpc.StatusCode) -> None:
        return None


_SILENT = _Silent()  # stateless


class RpcLogServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped (Any) for mypy
    """Logs every finished call as one structured line."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger(RPC_LOGGER)
        self._rpcs = RpcCache()

    def _start(self, rpc: Rpc, context: Context) -> _LoggedCall | _Silent:
        if not self._log.isEnabledFor(logging.WARNING):
            return _SILENT
        return _LoggedCall(self._log, rpc, context)

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return self.wrap_handler(handler_call_details.method, await continuation(handler_call_details))

    def scope_for(self, method: str) -> Start | None:
        """This layer's scope for a call of ``method`` (mesh.server.wrap.ScopeLayer)."""
        return scope_of(method, self._start, skip_health=True)

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        return wrap_handler(method, handler, self._rpcs, self._start, skip_health=True)
