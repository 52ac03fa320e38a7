"""The trace store: spans grouped by trace id, the oldest trace evicted, spans per trace capped, OTLP decoded."""

from __future__ import annotations

import grpc
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode

from mesh.dashboard.traces import MAX_ATTRIBUTES, MAX_VALUE_CHARS, SpanRecord, TraceStore, decode_export
from mesh.tracing.client import ClientTracing

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736


def record(trace: int, span: int, parent: int = 0, **fields: object) -> SpanRecord:
    values: dict[str, object] = {
        "trace_id": f"{trace:032x}",
        "span_id": f"{span:016x}",
        "parent_span_id": f"{parent:016x}" if parent else "",
        "name": f"span-{span}",
        "service": "inventory",
        "kind": "SERVER",
        "start_ns": 1_000 + span,
        "end_ns": 2_000 + span,
    }
    values.update(fields)
    return SpanRecord(**values)  # type: ignore[arg-type]


def test_spans_are_grouped_by_trace_and_listed_newest_first() -> None:
    store = TraceStore()
    store.add([record(1, 1), record(2, 2, start_ns=5_000, end_ns=6_000)])
    store.add([record(1, 3, parent=1, kind="CLIENT", service="order")])
    assert len(store) == 2
    recent = store.recent()
    assert [s.trace_id for s in recent] == [f"{2:032x}", f"{1:032x}"]
    first = store.trace_json(f"{1:032x}")
    assert first is not None
    assert [span["span_id"] for span in first["spans"]] == [f"{1:016x}", f"{3:016x}"]
    assert first["summary"]["services"] == ["inventory", "order"]
    assert first["summary"]["root"] == "span-1"
    assert store.trace_json(f"{3:032x}") is None


def test_the_trace_updated_longest_ago_is_evicted_first() -> None:
    store = TraceStore(max_traces=3)
    store.add([record(1, 1), record(2, 2), record(3, 3)])
    store.add([record(1, 11, parent=1)])  # trace 1 is still being written: 2 is now the oldest
    store.add([record(4, 4)])
    assert len(store) == 3
    assert store.evicted == 1
    assert store.trace_json(f"{2:032x}") is None
    assert {s.trace_id for s in store.recent()} == {f"{n:032x}" for n in (1, 3, 4)}


def test_traces_with_an_error_or_a_retry_outlive_boring_ones() -> None:
    store = TraceStore(max_traces=4)
    store.add([record(1, 1, status="ERROR")])
    store.add([record(2, 2, kind="CLIENT", attributes={"mesh.attempt": 2})])
    store.add(record(n, n) for n in range(3, 10))  # seven boring traces arrive after them
    held = {s.trace_id for s in store.recent()}
    assert {f"{1:032x}", f"{2:032x}"} <= held and len(held) == 4
    assert [s.trace_id for s in store.recent(notable_only=True)] == [f"{2:032x}", f"{1:032x}"]
    assert store.notable == 2


def test_notable_traces_fill_at_most_half_the_store() -> None:
    store = TraceStore(max_traces=4)
    store.add(record(n, n, status="ERROR") for n in range(1, 7))
    assert len(store) == 4 and store.notable == 4  # nothing boring to evict: the oldest go
    store.add([record(7, 7), record(8, 8)])
    assert len(store) == 4
    assert store.notable <= 3
    assert store.trace_json(f"{8:032x}") is not None


def test_spans_past_the_cap_are_counted_not_kept() -> None:
    store = TraceStore(max_spans_per_trace=5)
    store.add(record(1, n) for n in range(1, 9))
    held = store.trace_json(f"{1:032x}")
    assert held is not None
    assert len(held["spans"]) == 5
    assert held["dropped_spans"] == 3
    assert store.recent()[0].dropped_spans == 3


def test_version_grows_only_when_spans_arrive() -> None:
    store = TraceStore()
    store.add([])
    assert store.version == 0
    store.add([record(1, 1)])
    assert store.version == 1


def test_summary_counts_errors_and_the_attempts_of_retried_calls() -> None:
    server = record(1, 1, name="shop.order.v1.OrderService/PlaceOrder")
    one_attempt = record(1, 2, parent=1, kind="CLIENT", attributes={"mesh.attempt": 1})
    call = record(1, 3, parent=1, kind="CLIENT", status="ERROR")
    attempts = [
        record(1, 4, parent=3, kind="CLIENT", status="ERROR", attributes={"mesh.attempt": 1}),
        record(1, 5, parent=3, kind="CLIENT", attributes={"mesh.attempt": 2}),
    ]
    store = TraceStore()
    store.add([server, one_attempt, call, *attempts])
    summary = store.recent()[0]
    assert summary.root == "shop.order.v1.OrderService/PlaceOrder"
    assert summary.errors == 2
    assert summary.attempts == 2  # the one-attempt call's span is no retry


def request_of(spans: list[ReadableSpan]) -> ExportTraceServiceRequest:
    encoded = encode_spans(spans)
    return ExportTraceServiceRequest.FromString(encoded.SerializeToString())


def test_decode_keeps_ids_service_kind_times_status_and_attributes() -> None:
    resource = Resource.create({"service.name": "gateway"})
    parent = SpanContext(TRACE, 0x11, False, TraceFlags(1))
    span = ReadableSpan(
        "shop.inventory.v1.InventoryService/GetProduct",
        context=SpanContext(TRACE, 0x22, False, TraceFlags(1)),
        parent=parent,
        resource=resource,
        kind=SpanKind.CLIENT,
        start_time=1_700_000_000_000_000_000,
        end_time=1_700_000_000_003_000_000,
        status=Status(StatusCode.ERROR, "UNAVAILABLE"),
        attributes={
            "mesh.attempt": 2,
            "server.address": "127.0.0.1",
            "server.port": 5004,
            "rpc.grpc.status_code": 14,
            "ratio": 0.5,
            "flag": True,
            "list": [1, 2],
            "long": "x" * 1000,
        },
    )
    [decoded] = decode_export(request_of([span]))
    assert decoded.trace_id == f"{TRACE:032x}"
    assert decoded.span_id == f"{0x22:016x}"
    assert decoded.parent_span_id == f"{0x11:016x}"
    assert decoded.service == "gateway"
    assert decoded.kind == "CLIENT"
    assert decoded.end_ns - decoded.start_ns == 3_000_000
    assert (decoded.status, decoded.status_message) == ("ERROR", "UNAVAILABLE")
    attributes = decoded.attributes
    assert attributes["mesh.attempt"] == 2 and attributes["server.port"] == 5004
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["ratio"] == 0.5 and attributes["flag"] is True and attributes["list"] == [1, 2]
    assert isinstance(attributes["long"], str) and len(attributes["long"]) == MAX_VALUE_CHARS
    assert decoded.as_json()["duration_ms"] == 3.0


def test_decode_caps_attributes_but_keeps_the_attempt_number() -> None:
    many = {f"key.{n:03d}": n for n in range(MAX_ATTRIBUTES + 10)}
    many["mesh.attempt"] = 3  # last: past the cap, kept anyway
    span = ReadableSpan(
        "call",
        context=SpanContext(TRACE, 0x33, False, TraceFlags(1)),
        resource=Resource.create({"service.name": "order"}),
        attributes=many,
        start_time=1,
        end_time=2,
    )
    [decoded] = decode_export(request_of([span]))
    assert len(decoded.attributes) == MAX_ATTRIBUTES + 1
    assert decoded.attributes["mesh.attempt"] == 3


class _Collect(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: object) -> SpanExportResult:
        self.spans.extend(spans)  # type: ignore[call-overload]
        return SpanExportResult.SUCCESS


def test_the_mesh_client_spans_of_a_retried_call_decode_as_a_call_with_its_attempts() -> None:
    """What mesh/tracing/client.py emits for a call that failed over: one call span, one per attempt."""
    collect = _Collect()
    provider = TracerProvider(resource=Resource.create({"service.name": "gateway"}))
    provider.add_span_processor(SimpleSpanProcessor(collect))
    method = (
        ClientTracing(provider.get_tracer("test"))
        .for_channel(None)
        .for_method("/shop.inventory.v1.InventoryService/ListProducts", "unary_unary")
    )
    assert method is not None
    call = method.call_start(())
    call.attempt_start(1, "127.0.0.1:5004", ())
    call.attempt_end(grpc.StatusCode.UNAVAILABLE)
    call.attempt_start(2, "127.0.0.1:5014", ())
    call.call_end(grpc.StatusCode.OK)
    store = TraceStore()
    store.add(decode_export(request_of(collect.spans)))
    summary = store.recent()[0]
    assert summary.spans == 3 and summary.attempts == 2 and summary.errors == 1
    held = store.trace_json(summary.trace_id)
    assert held is not None
    by_attempt = {s["attributes"].get("mesh.attempt"): s for s in held["spans"]}
    parent = by_attempt[None]
    assert parent["kind"] == "CLIENT" and parent["parent_span_id"] == ""
    assert by_attempt[1]["parent_span_id"] == parent["span_id"] == by_attempt[2]["parent_span_id"]
    assert by_attempt[1]["attributes"]["server.port"] == 5004
    assert by_attempt[1]["attributes"]["rpc.grpc.status_code"] == 14
    assert by_attempt[2]["attributes"]["server.port"] == 5014
