"""SpanEncoder writes the bytes the OTLP exporter's own encoder would; the exporter sends them."""

from __future__ import annotations

import asyncio

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

from mesh.tracing.otlp import BytesOtlpSpanExporter, SpanEncoder
from tests.support.otlp import serve_receiver

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SHOP = Resource.create({"service.name": "inventory"})
OTHER = Resource(
    {"service.name": "order", "host.id": 7}, schema_url="https://opentelemetry.io/schemas/1.21.0"
)
MESH = InstrumentationScope("mesh")
VERSIONED = InstrumentationScope("lib", "1.2", "https://example.test/schema", {"a": "b"})


def span(span_id: int, **fields: object) -> ReadableSpan:
    options: dict[str, object] = {
        "context": SpanContext(TRACE, span_id, False, TraceFlags(1)),
        "resource": SHOP,
        "instrumentation_scope": MESH,
        "kind": SpanKind.SERVER,
        "start_time": 1_767_225_600_000_000_000 + span_id,
        "end_time": 1_767_225_600_000_500_000 + span_id,
        "attributes": {"rpc.system": "grpc", "rpc.method": "GetProduct", "rpc.grpc.status_code": 0},
    }
    options.update(fields)
    return ReadableSpan(str(options.pop("name", "shop.inventory.v1.InventoryService/GetProduct")), **options)  # type: ignore[arg-type]


SPANS = [
    span(1),
    span(2, parent=SpanContext(TRACE, 1, True, TraceFlags(1)), kind=SpanKind.CLIENT),
    span(
        3, parent=SpanContext(TRACE, 2, False, TraceFlags(1)), status=Status(StatusCode.ERROR, "UNAVAILABLE")
    ),
    span(
        4, status=Status(StatusCode.OK), attributes={"b": True, "f": 0.25, "n": -3, "l": [1, 2], "s": ["x"]}
    ),
    span(5, context=SpanContext(TRACE, 5, False, TraceFlags(0), TraceState([("vendor", "v1"), ("x", "y")]))),
    span(6, events=[Event("retry", {"attempt": 2}, 99)], links=[Link(SpanContext(TRACE, 1, True))]),
    span(7, name="", kind=SpanKind.INTERNAL, attributes={}, start_time=None, end_time=None),
    span(8, resource=OTHER, instrumentation_scope=VERSIONED, kind=SpanKind.PRODUCER),
    span(9, resource=OTHER, instrumentation_scope=None, kind=SpanKind.CONSUMER),
    span(10, attributes={"rpc.system": "grpc", "big": 2**62, "bytes": b"\x00\x01", "empty": ""}),
]


def test_the_bytes_parse_to_what_the_exporters_encoder_builds() -> None:
    encoder = SpanEncoder()
    for _ in range(2):  # the second time from the memo
        parsed = ExportTraceServiceRequest.FromString(encoder.request(SPANS))
        assert parsed == encode_spans(SPANS)


def test_each_span_alone_matches_too() -> None:
    encoder = SpanEncoder()
    for one in SPANS:
        assert ExportTraceServiceRequest.FromString(encoder.request([one])) == encode_spans([one]), one.name


def test_an_attribute_that_cannot_be_encoded_is_left_out_and_the_span_kept() -> None:
    odd = span(11, attributes={"rpc.system": "grpc", "odd": object()})
    (resource_spans,) = ExportTraceServiceRequest.FromString(SpanEncoder().request([odd])).resource_spans
    (exported,) = resource_spans.scope_spans[0].spans
    assert [a.key for a in exported.attributes] == ["rpc.system"]


async def test_the_exporter_sends_them_to_a_real_receiver() -> None:
    async with serve_receiver() as (receiver, port):
        exporter = BytesOtlpSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True)
        try:
            result = await asyncio.to_thread(exporter.export, SPANS)
        finally:
            await asyncio.to_thread(exporter.shutdown)
    assert result is SpanExportResult.SUCCESS
    expected = [s for rs in encode_spans(SPANS).resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert [r.span for r in receiver.spans] == expected
    assert {r.service for r in receiver.spans} == {"inventory", "order"}
