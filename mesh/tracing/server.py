"""Server spans: continue the caller's W3C trace, make the span current for the handler.

The handler's own outgoing calls (through MeshChannels traced by :mod:`mesh.tracing.client`)
run while the server span is the current span, so they become its children and the whole
request forms one trace. ``grpc.health.v1.Health`` calls (Consul probes every second) get no
span at all.
"""

from __future__ import annotations

from contextvars import Token
from typing import Any

import grpc
import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

from mesh.rpc import Rpc, RpcCache
from mesh.server.wrap import Context, Continuation, wrap_handler

_PROPAGATOR = TraceContextTextMapPropagator()  # stateless
_TRACE_KEYS = ("traceparent", "tracestate")
# OpenTelemetry's RPC conventions: a server span is an error only for these codes (the
# others are the client's mistake, not the server's).
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class _ServerSpan:
    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span, token: Token[otel_context.Context]) -> None:
        self._span = span
        self._token = token

    def done(self, code: grpc.StatusCode) -> None:
        span = self._span
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()
        otel_context.detach(self._token)


def parent_context(metadata: Any) -> otel_context.Context | None:
    """The caller's trace context from ``traceparent``/``tracestate`` metadata, if any."""
    carrier = {key: value for key, value in metadata or () if key in _TRACE_KEYS}
    return _PROPAGATOR.extract(carrier) if carrier else None


class TracingServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped (Any) for mypy
    """One SERVER span per call (health checks excepted), current while the handler runs."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        self._rpcs = RpcCache()

    def _start(self, rpc: Rpc, context: Context) -> _ServerSpan:
        span = self._tracer.start_span(
            rpc.name,
            context=parent_context(context.invocation_metadata()),
            kind=trace.SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": rpc.service,
                "rpc.method": rpc.method,
                "net.peer.name": context.peer(),
            },
        )
        return _ServerSpan(span, otel_context.attach(trace.set_span_in_context(span)))

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return self.wrap_handler(handler_call_details.method, await continuation(handler_call_details))

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        return wrap_handler(method, handler, self._rpcs, self._start, skip_health=True)
