"""Client spans fed by the MeshChannel's call objects: one per call, one more per retried attempt.

Why here and not in an interceptor: the logical call (with its retries and failover) exists
only in the MeshChannel, and a grpc.aio interceptor costs a task per call.

The shape of a trace. Each attempt sends its own W3C ``traceparent`` (replacing any
``traceparent``/``tracestate`` already on the call), so the server's span is always the child
of the client span of the attempt that reached it:

- a call made in one attempt (nearly all of them) is **one** CLIENT span: the call's
  attributes plus that attempt's number (``mesh.attempt`` = 1), endpoint
  (``net.peer.name``/``server.address``/``server.port``) and status code;
- a call that took several attempts (retries, failover) is a CLIENT span for the call with
  one child CLIENT span per attempt, each with its number, endpoint and status code;
- a call refused before any attempt (circuit open, expired deadline, no endpoint) is one
  span without ``mesh.attempt``.

The call span starts in the caller's context (a current server span is its parent) without
being made current. Where no span is current (the gateway has no server span) but the call's
metadata carries a ``traceparent``, that is the parent, so the HTTP client's trace continues.
Health checks get no spans.

Why one span for a one-attempt call: a second span would only repeat the first (same
duration within microseconds, same code), and every span costs the caller CPU on the call
path: it halves the spans of the common case (bench/interceptors.py, docs/benchmarks.md).
Attempt spans are kept as tuples until the call ends, when it is known whether there was more
than one.

Why lean spans: profiling (bench/interceptors.py, cProfile, callgrind) showed the SDK's
``Tracer.start_span``/``Span.end`` at 20-45 us each here (attribute validation under a
lock per span, sampler, processor fan-out at start and end). These spans are never current
and never change after they end, so they are handed to the provider's span processor as
finished ``ReadableSpan``s, once, at the call's end. What the SDK would do is kept: the
provider's sampler decides per call (attempts follow the call; the SDK's own
``always_on``/``parentbased_always_on`` are decided inline, with the same result), its id
generator makes the ids, its resource and span processor (``Tracer.span_processor``, the
provider's active processors) receive the spans, so exporters, batching and
``OTEL_BSP_*``/``OTEL_TRACES_SAMPLER*`` work unchanged. What is skipped: ``on_start`` (the
exporting processors do nothing there) and span limits (a client span has at most eight
attributes).
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, sampling
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

from mesh.observer import CallObservation, Metadata
from mesh.rpc import HEALTH_PREFIX, rpc_of
from mesh.tracing.server import parent_context

_TRACE_KEYS = frozenset(("traceparent", "tracestate"))
_TRACEPARENT = "00-%032x-%016x-%02x"  # %-formatting: a third cheaper than an f-string here
_CLIENT = trace.SpanKind.CLIENT
_OK = grpc.StatusCode.OK
_UNSET = Status(StatusCode.UNSET)
_STATUS = {code: _UNSET if code is _OK else Status(StatusCode.ERROR, code.name) for code in grpc.StatusCode}
_CODE = {code: code.value[0] for code in grpc.StatusCode}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_RECORD_AND_SAMPLE = Decision.RECORD_AND_SAMPLE
_DROP = Decision.DROP
_ALWAYS_ON = sampling.ALWAYS_ON
_PARENT_OR_ON = sampling.DEFAULT_ON  # the SDK's default sampler: ParentBased(ALWAYS_ON)
ATTEMPT_ATTRIBUTE = "mesh.attempt"
CODE_ATTRIBUTE = "rpc.grpc.status_code"
SCOPE = InstrumentationScope("mesh")
_now = time.time_ns

# An ended attempt: number, endpoint, span id, start and end (ns), status code.
_Attempt = tuple[int, str, int, int, int, grpc.StatusCode]


def _peer(target: str) -> dict[str, Any]:
    host, _, port = target.rpartition(":")
    host = host.strip("[]") or target
    peer: dict[str, Any] = {"net.peer.name": host, "server.address": host}
    if port.isdigit():
        peer["server.port"] = int(port)
    return peer


class _CallSpans:
    __slots__ = (
        "_attempts",
        "_flags",
        "_method",
        "_open",
        "_parent",
        "_recording",
        "_sampling_attributes",
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
        sampler = tracer.sampler
        if parent.is_valid:
            self._parent: SpanContext | None = parent
            trace_id = parent.trace_id
            trace_state: TraceState | None = parent.trace_state
            inherited = parent.trace_flags.sampled
        else:
            self._parent = None
            trace_id = tracer.id_generator.generate_trace_id()
            trace_state = None
            inherited = True
        self._sampling_attributes: Any = None
        if sampler is _ALWAYS_ON or sampler is _PARENT_OR_ON:
            # What these two samplers return, without a SamplingResult per call: the parent's
            # trace state, and for ParentBased the parent's decision (sample a root).
            decision = _RECORD_AND_SAMPLE if sampler is _ALWAYS_ON or inherited else _DROP
        else:
            result = sampler.should_sample(context, trace_id, method.name, _CLIENT, method.attributes)
            decision = result.decision
            trace_state = result.trace_state
            self._sampling_attributes = result.attributes
        self._trace_id = trace_id
        self._flags = _SAMPLED if decision is _RECORD_AND_SAMPLE else _NOT_SAMPLED
        self._trace_state = trace_state
        self._recording = decision is not _DROP
        self._started = _now()
        self._open: tuple[int, str, int, int] | None = None  # the attempt on the wire
        self._attempts: list[_Attempt] | None = None

    def attempt_start(self, attempt: int, target: str, metadata: Metadata) -> Metadata:
        span_id = self._method.new_span_id()
        self._open = (attempt, target, span_id, _now())
        traceparent = ("traceparent", _TRACEPARENT % (self._trace_id, span_id, self._flags))
        if not metadata and not self._trace_state:
            return (traceparent,)
        carried = [(k, v) for k, v in metadata or () if k not in _TRACE_KEYS]
        carried.append(traceparent)
        if self._trace_state:
            carried.append(("tracestate", self._trace_state.to_header()))
        return tuple(carried)

    def attempt_end(self, code: grpc.StatusCode) -> None:
        opened = self._open
        if opened is None:
            return
        self._open = None
        if self._recording:
            ended = (*opened, _now(), code)
            if self._attempts is None:
                self._attempts = [ended]
            else:
                self._attempts.append(ended)

    def call_end(self, code: grpc.StatusCode) -> None:
        self.attempt_end(code)
        if not self._recording:
            return
        attempts = self._attempts
        method = self._method
        if attempts is not None and len(attempts) == 1:
            number, target, span_id, _, _, _ = attempts[0]
            attributes = {**method.with_peer(target), ATTEMPT_ATTRIBUTE: number, CODE_ATTRIBUTE: _CODE[code]}
            self._emit(self._context(span_id), self._parent, attributes, code, self._started, _now())
            return
        ended = _now()
        call = self._context(method.new_span_id())
        for number, target, span_id, started, finished, attempt_code in attempts or ():
            attributes = {
                **method.peer(target),
                ATTEMPT_ATTRIBUTE: number,
                CODE_ATTRIBUTE: _CODE[attempt_code],
            }
            self._emit(self._context(span_id), call, attributes, attempt_code, started, finished)
        self._emit(
            call, self._parent, {**method.attributes, CODE_ATTRIBUTE: _CODE[code]}, code, self._started, ended
        )

    def _context(self, span_id: int) -> SpanContext:
        return SpanContext(self._trace_id, span_id, False, self._flags, self._trace_state)

    def _emit(
        self,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        code: grpc.StatusCode,
        started: int,
        ended: int,
    ) -> None:
        if self._sampling_attributes:
            attributes.update(self._sampling_attributes)
        method = self._method
        method.emit(
            ReadableSpan(
                method.name,
                context=context,
                parent=parent,
                resource=method.resource,
                attributes=attributes,
                kind=_CLIENT,
                status=_STATUS[code],
                start_time=started,
                end_time=ended,
                instrumentation_scope=SCOPE,
            )
        )


class _MethodTracing:
    __slots__ = ("_peers", "_with_peers", "attributes", "emit", "name", "new_span_id", "resource", "tracer")

    def __init__(self, tracer: SdkTracer, path: str, call_type: str) -> None:
        rpc = rpc_of(path, call_type)
        self.tracer = tracer
        self.emit = tracer.span_processor.on_end
        self.new_span_id = tracer.id_generator.generate_span_id
        self.resource = tracer.resource
        self.name = rpc.name
        self.attributes: dict[str, Any] = {
            "rpc.system": "grpc",
            "rpc.service": rpc.service,
            "rpc.method": rpc.method,
        }
        self._peers: dict[str, dict[str, Any]] = {}
        self._with_peers: dict[str, dict[str, Any]] = {}

    def peer(self, target: str) -> dict[str, Any]:
        """An attempt span's endpoint attributes (memoized: endpoints are few)."""
        peer = self._peers.get(target)
        if peer is None:
            if len(self._peers) > 256:
                self._peers.clear()  # endpoints come and go; keep the memo small
            peer = self._peers[target] = _peer(target)
        return peer

    def with_peer(self, target: str) -> dict[str, Any]:
        """A one-attempt call's attributes: the call's and its endpoint's (memoized)."""
        both = self._with_peers.get(target)
        if both is None:
            if len(self._with_peers) > 256:
                self._with_peers.clear()
            both = self._with_peers[target] = {**self.attributes, **self.peer(target)}
        return both

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
    """A :class:`~mesh.observer.CallObserver` giving every mesh call a span, and retried calls one per attempt.

    ``tracer`` must be the OpenTelemetry SDK's (``TracerProvider().get_tracer(...)``): its
    sampler, id generator, resource and span processor are what the spans go through.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        if not isinstance(tracer, SdkTracer):
            raise TypeError(f"ClientTracing needs the OpenTelemetry SDK's tracer, got {type(tracer)!r}")
        self._channel = _ChannelTracing(tracer)

    def for_channel(self, channel: Any) -> _ChannelTracing:
        return self._channel
