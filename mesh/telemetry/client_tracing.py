"""Client spans fed by the MeshChannel's call objects: one per call, one child per attempt.

Why here and not in an interceptor: the logical call (with its retries and failover) exists
only in the MeshChannel, and a grpc.aio interceptor costs a task per call. The call span
starts in the caller's context (a current server span is its parent) without being made
current; each attempt gets a child span carrying its number (``mesh.attempt``), its endpoint
(``net.peer.name``/``server.address``/``server.port``) and its status code, and the attempt
span's context is what the attempt sends as W3C ``traceparent`` (replacing any
``traceparent``/``tracestate`` already on the call), so the server's span is a child of the
attempt that reached it. Where no span is current (the gateway has no server span) but the
call's metadata carries a ``traceparent``, that is the call span's parent, so the HTTP
client's trace continues. Health checks get no spans.

Why lean spans: profiling (bench/interceptors.py, cProfile) showed the SDK's
``Tracer.start_span``/``Span.end`` at 20-45 us each here (attribute validation under a
lock per span, sampler, processor fan-out at start and end), two per call. These spans are
never current and never change after they end, so they are kept as plain fields and handed
to the provider's span processor as finished ``ReadableSpan``s, once, at their end. What the
SDK would do is kept: the provider's sampler decides per call (attempts follow the call),
its id generator makes the ids, its resource and span processor (``Tracer.span_processor``,
the provider's active processors) receive the spans, so exporters, batching and
``OTEL_BSP_*``/``OTEL_TRACES_SAMPLER*`` work unchanged. What is skipped: ``on_start``
(the exporting processors do nothing there) and span limits (a client span has at most
eight attributes).
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from mesh.interceptors.rpc import HEALTH_PREFIX, rpc_of
from mesh.interceptors.tracing_server import parent_context
from mesh.observer import CallObservation, Metadata

_TRACE_KEYS = frozenset(("traceparent", "tracestate"))
_CLIENT = trace.SpanKind.CLIENT
_OK = grpc.StatusCode.OK
_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
ATTEMPT_ATTRIBUTE = "mesh.attempt"
SCOPE = InstrumentationScope("mesh")
_now = time.time_ns


def _status(code: grpc.StatusCode) -> Status:
    return _UNSET if code is _OK else Status(StatusCode.ERROR, code.name)


def _peer(target: str) -> dict[str, Any]:
    host, _, port = target.rpartition(":")
    host = host.strip("[]") or target
    peer: dict[str, Any] = {"net.peer.name": host, "server.address": host}
    if port.isdigit():
        peer["server.port"] = int(port)
    return peer


class _CallSpans:
    __slots__ = (
        "_attempt",
        "_attempt_id",
        "_attempt_started",
        "_attempt_target",
        "_call_context",
        "_flags",
        "_method",
        "_parent",
        "_recording",
        "_sampling_attributes",
        "_span_id",
        "_started",
        "_trace_id",
        "_trace_state",
    )

    def __init__(self, method: _MethodTracing, metadata: Metadata) -> None:
        self._method = method
        tracer = method.tracer
        parent = trace.get_current_span().get_span_context()
        context = None
        if not parent.is_valid and metadata:
            context = parent_context(metadata)  # no span here (the gateway): continue the caller's
            if context is not None:
                parent = trace.get_current_span(context).get_span_context()
        if parent.is_valid:
            self._parent: SpanContext | None = parent
            trace_id = parent.trace_id
        else:
            self._parent = None
            trace_id = tracer.id_generator.generate_trace_id()
        result = tracer.sampler.should_sample(context, trace_id, method.name, _CLIENT, method.attributes)
        self._trace_id = trace_id
        self._span_id = tracer.id_generator.generate_span_id()
        self._flags = _SAMPLED if result.decision is Decision.RECORD_AND_SAMPLE else _NOT_SAMPLED
        self._trace_state = result.trace_state
        self._recording = result.decision is not Decision.DROP
        self._sampling_attributes = result.attributes
        self._started = _now()
        self._attempt = 0  # 0: no attempt open
        self._attempt_id = 0
        self._attempt_started = 0
        self._attempt_target = ""
        self._call_context: SpanContext | None = None

    def _call(self) -> SpanContext:
        """The call span's context (built once: the parent of each attempt, then its own)."""
        context = self._call_context
        if context is None:
            context = self._call_context = self._context(self._span_id)
        return context

    def _context(self, span_id: int) -> SpanContext:
        return SpanContext(self._trace_id, span_id, False, self._flags, self._trace_state)

    def attempt_start(self, attempt: int, target: str, metadata: Metadata) -> Metadata:
        span_id = self._attempt_id = self._method.tracer.id_generator.generate_span_id()
        self._attempt = attempt
        self._attempt_target = target
        self._attempt_started = _now()
        carried = [(k, v) for k, v in metadata or () if k not in _TRACE_KEYS]
        carried.append(("traceparent", f"00-{self._trace_id:032x}-{span_id:016x}-{self._flags:02x}"))
        if self._trace_state:
            carried.append(("tracestate", self._trace_state.to_header()))
        return tuple(carried)

    def attempt_end(self, code: grpc.StatusCode) -> None:
        attempt = self._attempt
        if not attempt:
            return
        self._attempt = 0
        if not self._recording:
            return
        method = self._method
        attributes = {
            **method.peer(self._attempt_target),
            ATTEMPT_ATTRIBUTE: attempt,
            "rpc.grpc.status_code": code.value[0],
        }
        method.emit(
            ReadableSpan(
                method.name,
                context=self._context(self._attempt_id),
                parent=self._call(),
                resource=method.tracer.resource,
                attributes=attributes,
                kind=_CLIENT,
                status=_status(code),
                start_time=self._attempt_started,
                end_time=_now(),
                instrumentation_scope=SCOPE,
            )
        )

    def call_end(self, code: grpc.StatusCode) -> None:
        self.attempt_end(code)
        if not self._recording:
            return
        method = self._method
        attributes = {**method.attributes, "rpc.grpc.status_code": code.value[0]}
        if self._sampling_attributes:
            attributes.update(self._sampling_attributes)
        method.emit(
            ReadableSpan(
                method.name,
                context=self._call(),
                parent=self._parent,
                resource=method.tracer.resource,
                attributes=attributes,
                kind=_CLIENT,
                status=_status(code),
                start_time=self._started,
                end_time=_now(),
                instrumentation_scope=SCOPE,
            )
        )


class _MethodTracing:
    __slots__ = ("_peers", "attributes", "emit", "name", "tracer")

    def __init__(self, tracer: SdkTracer, path: str, call_type: str) -> None:
        rpc = rpc_of(path, call_type)
        self.tracer = tracer
        self.emit = tracer.span_processor.on_end
        self.name = rpc.name
        self.attributes: dict[str, Any] = {
            "rpc.system": "grpc",
            "rpc.service": rpc.service,
            "rpc.method": rpc.method,
        }
        self._peers: dict[str, dict[str, Any]] = {}

    def peer(self, target: str) -> dict[str, Any]:
        peer = self._peers.get(target)
        if peer is None:
            if len(self._peers) > 256:
                self._peers.clear()  # endpoints come and go; keep the memo small
            peer = self._peers[target] = _peer(target)
        return peer

    def call_start(self, metadata: Metadata) -> CallObservation:
        return _CallSpans(self, metadata)


class _ChannelTracing:
    __slots__ = ("_tracer",)

    def __init__(self, tracer: SdkTracer) -> None:
        self._tracer = tracer

    def for_method(self, path: str, call_type: str) -> _MethodTracing | None:
        if path.startswith(HEALTH_PREFIX):
            return None
        return _MethodTracing(self._tracer, path, call_type)


class ClientTracing:
    """A :class:`~mesh.observer.CallObserver` giving every mesh call a span per call and attempt.

    ``tracer`` must be the OpenTelemetry SDK's (``TracerProvider().get_tracer(...)``): its
    sampler, id generator, resource and span processor are what the spans go through.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        if not isinstance(tracer, SdkTracer):
            raise TypeError(f"ClientTracing needs the OpenTelemetry SDK's tracer, got {type(tracer)!r}")
        self._channel = _ChannelTracing(tracer)

    def for_channel(self, channel: Any) -> _ChannelTracing:
        return self._channel
