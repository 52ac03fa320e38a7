"""Server spans: continue the caller's W3C trace, make the span current for the handler.

The handler's own outgoing calls (through MeshChannels traced by :mod:`mesh.tracing.client`)
run while the server span is the current span, so they become its children and the whole
request forms one trace. ``grpc.health.v1.Health`` calls (Consul probes every second) get no
span at all.

Why lean spans, as the client's (:mod:`mesh.tracing.client`): the SDK's ``start_span`` and
``Span.end`` cost tens of microseconds per call (a sampling result, attribute validation under
a lock, processor fan-out at start and end), about a third of a traced one-row read
(bench/server_instructions.py). A server span changes only when it ends, so the handler runs
under a non-recording span that carries the ids (its outgoing calls and log lines see them),
and at the end one finished ``ReadableSpan`` goes to the provider's span processor. The
provider's sampler, id generator, resource and processors are used as the SDK would use them;
``on_start`` (exporting processors do nothing there) and span limits (four attributes) are
skipped. A tracer other than the SDK's gets real spans through its own ``start_span``.
"""

from __future__ import annotations

import time
from contextvars import Token
from typing import Any

import grpc
import grpc.aio
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, sampling
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status, StatusCode

from mesh.rpc import Rpc, RpcCache
from mesh.server.wrap import Context, Continuation, Start, scope_of, wrap_handler

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


_SERVER = trace.SpanKind.SERVER
_UNSET = Status(StatusCode.UNSET)
_STATUS = {
    code: Status(StatusCode.ERROR, code.name) if code in SERVER_ERRORS else _UNSET for code in grpc.StatusCode
}
_CODE = {code: code.value[0] for code in grpc.StatusCode}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_ALWAYS_ON = sampling.ALWAYS_ON
_PARENT_OR_ON = sampling.DEFAULT_ON  # the SDK's default sampler: ParentBased(ALWAYS_ON)
_INVALID = trace.INVALID_SPAN_CONTEXT
SCOPE = InstrumentationScope("mesh")
_now = time.time_ns


class _LeanServerSpan:
    """A call's server span: ids current while the handler runs, one ReadableSpan at the end."""

    __slots__ = ("_attributes", "_context", "_parent", "_rpc", "_started", "_token")

    def __init__(
        self,
        rpc: _RpcTracing,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any] | None,
    ) -> None:
        self._rpc = rpc
        self._context = context
        self._parent = parent
        self._attributes = attributes  # None: not recorded (a sampler said drop)
        self._started = _now()
        self._token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(context)))

    def done(self, code: grpc.StatusCode) -> None:
        ended = _now()
        otel_context.detach(self._token)
        attributes = self._attributes
        if attributes is None:
            return
        attributes["rpc.grpc.status_code"] = _CODE[code]
        rpc = self._rpc
        rpc.emit(
            ReadableSpan(
                rpc.name,
                context=self._context,
                parent=self._parent,
                resource=rpc.resource,
                attributes=attributes,
                kind=_SERVER,
                status=_STATUS[code],
                start_time=self._started,
                end_time=ended,
                instrumentation_scope=SCOPE,
            )
        )


class _RpcTracing:
    """What every span of one method shares: its name, attributes and the provider's parts."""

    __slots__ = ("attributes", "emit", "name", "new_span_id", "new_trace_id", "resource", "sampler")

    def __init__(self, tracer: SdkTracer, rpc: Rpc) -> None:
        self.name = rpc.name
        self.attributes: dict[str, Any] = {
            "rpc.system": "grpc",
            "rpc.service": rpc.service,
            "rpc.method": rpc.method,
        }
        self.emit = tracer.span_processor.on_end
        self.new_span_id = tracer.id_generator.generate_span_id
        self.new_trace_id = tracer.id_generator.generate_trace_id
        self.resource = tracer.resource
        self.sampler = tracer.sampler

    def start(self, context: Context) -> _LeanServerSpan:
        metadata = context.invocation_metadata()
        carried = parent_context(metadata) if metadata else None
        parent = _INVALID if carried is None else trace.get_current_span(carried).get_span_context()
        sampler = self.sampler
        if parent.is_valid:
            trace_id, trace_state, inherited = parent.trace_id, parent.trace_state, parent.trace_flags.sampled
        else:
            trace_id, trace_state, inherited = self.new_trace_id(), None, True
        extra: Any = None
        if sampler is _ALWAYS_ON or sampler is _PARENT_OR_ON:
            # What these two samplers decide, without a SamplingResult per call.
            decision = Decision.RECORD_AND_SAMPLE if sampler is _ALWAYS_ON or inherited else Decision.DROP
        else:
            result = sampler.should_sample(carried, trace_id, self.name, _SERVER, self.attributes)
            decision, trace_state, extra = result.decision, result.trace_state, result.attributes
        flags = _SAMPLED if decision is Decision.RECORD_AND_SAMPLE else _NOT_SAMPLED
        attributes: dict[str, Any] | None = None
        if decision is not Decision.DROP:
            attributes = {**self.attributes, "net.peer.name": context.peer()}
            if extra:
                attributes.update(extra)
        own = SpanContext(trace_id, self.new_span_id(), False, flags, trace_state)
        return _LeanServerSpan(self, own, parent if parent.is_valid else None, attributes)


class _ServerSpan:
    """A span from a tracer other than the SDK's, through its own ``start_span``."""

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
        self._lean: dict[str, _RpcTracing] = {}

    def _start(self, rpc: Rpc, context: Context) -> _ServerSpan | _LeanServerSpan:
        tracer = self._tracer
        if isinstance(tracer, SdkTracer):
            lean = self._lean.get(rpc.path)
            if lean is None:
                lean = self._lean[rpc.path] = _RpcTracing(tracer, rpc)
            return lean.start(context)
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

    def scope_for(self, method: str) -> Start | None:
        """This layer's scope for a call of ``method`` (mesh.server.wrap.ScopeLayer)."""
        return scope_of(method, self._start, skip_health=True)

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        return wrap_handler(method, handler, self._rpcs, self._start, skip_health=True)
