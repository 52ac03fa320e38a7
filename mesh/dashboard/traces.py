"""The recent traces the dashboard shows: spans from OTLP, grouped by trace id, in bounded memory.

Why a store of our own and not a trace backend: the page wants the last few hundred traces of
a local mesh and a waterfall of one, nothing more; a Jaeger or Tempo would be one more process
for ``make run`` to start. Memory stays bounded whatever the services send: at most
``max_traces`` traces (the one updated longest ago is evicted first), at most
``max_spans_per_trace`` spans in one (later ones are counted, not kept), and each span's
attributes are capped in number and length.

Spans keep what a waterfall needs: ids, parent, name, the resource's ``service.name``, kind,
start and end, status, and their attributes, among them the mesh's attempt attributes
(``mesh.attempt``, ``server.address``/``server.port``, ``rpc.grpc.status_code``;
mesh/tracing/client.py), so the attempts of a retried or failed-over call show as separate
bars under their call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2

MAX_ATTRIBUTES = 32
MAX_VALUE_CHARS = 256
ATTEMPT_ATTRIBUTE = "mesh.attempt"

AttributeValue = str | int | float | bool | list[Any] | dict[str, Any] | None

_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One span as the page draws it (ids in lowercase hex, times in ns since the epoch)."""

    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root
    name: str
    service: str
    kind: str  # "SERVER", "CLIENT", ...
    start_ns: int
    end_ns: int
    status: str = "UNSET"  # "UNSET", "OK" or "ERROR"
    status_message: str = ""
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)

    @property
    def is_attempt(self) -> bool:
        return ATTEMPT_ATTRIBUTE in self.attributes

    def as_json(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "name": self.name,
            "service": self.service,
            "kind": self.kind,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "duration_ms": max(0, self.end_ns - self.start_ns) / 1e6,
            "status": self.status,
            "status_message": self.status_message,
            "attributes": dict(self.attributes),
        }


def _clip(text: str) -> str:
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 1] + "…"


def any_value(value: common_pb2.AnyValue, depth: int = 0) -> AttributeValue:
    """An OTLP ``AnyValue`` as plain JSON-ready data (bytes as hex; nesting capped)."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return _clip(value.string_value)
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "bytes_value":
        return _clip(value.bytes_value.hex())
    if depth >= 2:
        return "…"
    if which == "array_value":
        return [any_value(item, depth + 1) for item in value.array_value.values[:MAX_ATTRIBUTES]]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value, depth + 1) for kv in value.kvlist_value.values[:MAX_ATTRIBUTES]}
    return None


def attributes_of(pairs: Iterable[common_pb2.KeyValue]) -> dict[str, AttributeValue]:
    """At most MAX_ATTRIBUTES attributes, the mesh's attempt attributes always among them."""
    kept: dict[str, AttributeValue] = {}
    for pair in pairs:
        if len(kept) >= MAX_ATTRIBUTES and pair.key != ATTEMPT_ATTRIBUTE:
            continue
        kept[_clip(pair.key)] = any_value(pair.value)
    return kept


def decode_export(request: trace_service_pb2.ExportTraceServiceRequest) -> list[SpanRecord]:
    """Every span of an OTLP export request, with its resource's ``service.name``."""
    spans: list[SpanRecord] = []
    for resource_spans in request.resource_spans:
        service = "unknown"
        for attribute in resource_spans.resource.attributes:
            if attribute.key == "service.name":
                service = attribute.value.string_value or service
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    SpanRecord(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        name=_clip(span.name),
                        service=service,
                        kind=_KINDS.get(span.kind, "UNSPECIFIED"),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        status=_STATUS.get(span.status.code, "UNSET"),
                        status_message=_clip(span.status.message),
                        attributes=attributes_of(span.attributes),
                    )
                )
    return spans


@dataclass
class _Trace:
    spans: list[SpanRecord] = field(default_factory=list)
    dropped: int = 0
    notable: bool = False  # a span failed or a call took a second attempt: kept longer


def notable(span: SpanRecord) -> bool:
    """A span worth keeping its trace for: an error, or the second (or later) attempt of a call."""
    attempt = span.attributes.get(ATTEMPT_ATTRIBUTE)
    return span.status == "ERROR" or (isinstance(attempt, int) and attempt >= 2)


@dataclass(frozen=True)
class TraceSummary:
    """One line of the recent traces list."""

    trace_id: str
    root: str  # the root span's name (the earliest span whose parent is not here)
    root_service: str
    start_ns: int
    duration_ms: float
    spans: int
    dropped_spans: int
    services: tuple[str, ...]
    errors: int  # spans with status ERROR
    attempts: int  # attempt spans under a call span: calls that took several (retries, failover)

    def as_json(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "root": self.root,
            "root_service": self.root_service,
            "start_ns": self.start_ns,
            "duration_ms": self.duration_ms,
            "spans": self.spans,
            "dropped_spans": self.dropped_spans,
            "services": list(self.services),
            "errors": self.errors,
            "attempts": self.attempts,
        }


class TraceStore:
    """The last ``max_traces`` traces by trace id; ``version`` grows with every change.

    Eviction prefers the boring: under load the newest few hundred traces cover a second or
    two, and the one worth opening (an error, a retry, a failover) would be gone before anyone
    looked. So the trace updated longest ago *without* an error or a second attempt goes first;
    notable traces may fill at most half the store, past that the oldest of them goes.
    """

    SCAN = 64  # how far from the oldest end eviction looks for a boring trace

    def __init__(self, max_traces: int = 200, max_spans_per_trace: int = 500) -> None:
        if max_traces < 1 or max_spans_per_trace < 1:
            raise ValueError("max_traces and max_spans_per_trace must be >= 1")
        self.max_traces = max_traces
        self.max_spans_per_trace = max_spans_per_trace
        self.version = 0
        self.evicted = 0
        self.notable = 0
        self._traces: OrderedDict[str, _Trace] = OrderedDict()

    def __len__(self) -> int:
        return len(self._traces)

    def add(self, spans: Iterable[SpanRecord]) -> None:
        changed = False
        for span in spans:
            changed = True
            held = self._traces.get(span.trace_id)
            if held is None:
                held = self._traces[span.trace_id] = _Trace()
            else:
                self._traces.move_to_end(span.trace_id)  # still being written: keep it
            if len(held.spans) < self.max_spans_per_trace:
                held.spans.append(span)
            else:
                held.dropped += 1
            if not held.notable and notable(span):
                held.notable = True
                self.notable += 1
        while len(self._traces) > self.max_traces:
            self._evict()
        if changed:
            self.version += 1

    def _evict(self) -> None:
        victim = next(iter(self._traces))
        if self.notable <= self.max_traces // 2:
            for index, (trace_id, held) in enumerate(self._traces.items()):
                if index >= self.SCAN:
                    break
                if not held.notable:
                    victim = trace_id
                    break
        if self._traces.pop(victim).notable:
            self.notable -= 1
        self.evicted += 1

    def trace_json(self, trace_id: str) -> dict[str, Any] | None:
        """All kept spans of one trace, earliest first; None when it is not (or no longer) here."""
        held = self._traces.get(trace_id.lower())
        if held is None:
            return None
        spans = sorted(held.spans, key=lambda s: (s.start_ns, s.span_id))
        return {
            "trace_id": trace_id.lower(),
            "spans": [span.as_json() for span in spans],
            "dropped_spans": held.dropped,
            "summary": summarize(trace_id.lower(), held.spans, held.dropped).as_json(),
        }

    def recent(self, limit: int = 50, *, notable_only: bool = False) -> list[TraceSummary]:
        """The traces that started last, newest first (only those with an error or a retry)."""
        summaries = [
            summarize(trace_id, held.spans, held.dropped)
            for trace_id, held in self._traces.items()
            if held.notable or not notable_only
        ]
        summaries.sort(key=lambda s: s.start_ns, reverse=True)
        return summaries[:limit]


def summarize(trace_id: str, spans: list[SpanRecord], dropped: int) -> TraceSummary:
    ids = {span.span_id for span in spans}
    roots = [span for span in spans if not span.parent_span_id or span.parent_span_id not in ids]
    root = min(roots or spans, key=lambda s: s.start_ns)
    start = min(span.start_ns for span in spans)
    end = max(span.end_ns for span in spans)
    calls = {span.span_id for span in spans if span.kind == "CLIENT" and not span.is_attempt}
    return TraceSummary(
        trace_id=trace_id,
        root=root.name,
        root_service=root.service,
        start_ns=start,
        duration_ms=max(0, end - start) / 1e6,
        spans=len(spans),
        dropped_spans=dropped,
        services=tuple(sorted({span.service for span in spans})),
        errors=sum(1 for span in spans if span.status == "ERROR"),
        attempts=sum(1 for span in spans if span.is_attempt and span.parent_span_id in calls),
    )
