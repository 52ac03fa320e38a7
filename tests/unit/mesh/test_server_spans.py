"""Server spans: the lean path for the SDK's tracer keeps what the SDK's own spans would say."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode

from mesh.tracing.server import TracingServerInterceptor

METHOD = "/shop.test.v1.Probe/Look"
TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


class Context:
    """The parts of a grpc.aio servicer context a server layer reads."""

    def __init__(
        self, metadata: tuple[tuple[str, str], ...] = (), code: grpc.StatusCode | None = None
    ) -> None:
        self._metadata = metadata
        self._code = code

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def code(self) -> grpc.StatusCode | None:
        return self._code


async def call(tracer: trace.Tracer, context: Context) -> trace.SpanContext:
    """One call through the tracing layer; what the handler saw as the current span."""
    seen: list[trace.SpanContext] = []

    async def look(request: bytes, context: Any) -> bytes:
        seen.append(trace.get_current_span().get_span_context())
        return request

    handler = TracingServerInterceptor(tracer).wrap_handler(METHOD, grpc.unary_unary_rpc_method_handler(look))
    assert handler is not None
    await handler.unary_unary(b"x", context)
    assert trace.get_current_span().get_span_context() == trace.INVALID_SPAN_CONTEXT  # detached
    return seen[0]


def provider(**options: Any) -> tuple[trace.Tracer, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    sdk = TracerProvider(**options)
    sdk.add_span_processor(SimpleSpanProcessor(spans))
    return sdk.get_tracer("test"), spans


async def test_a_root_span_is_current_in_the_handler_and_exported_once_ended() -> None:
    tracer, spans = provider()
    seen = await call(tracer, Context())
    (span,) = spans.get_finished_spans()
    assert span.kind is SpanKind.SERVER and span.name == METHOD[1:] and span.parent is None
    assert span.context is not None and seen.span_id == span.context.span_id and seen.trace_flags.sampled
    assert dict(span.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "shop.test.v1.Probe",
        "rpc.method": "Look",
        "net.peer.name": "ipv4:127.0.0.1:40000",
        "rpc.grpc.status_code": 0,
    }
    assert span.start_time is not None and span.end_time is not None and span.start_time <= span.end_time
    assert span.resource.attributes.get("service.name") is not None


@pytest.mark.parametrize(
    ("code", "status"),
    [(grpc.StatusCode.UNAVAILABLE, StatusCode.ERROR), (grpc.StatusCode.NOT_FOUND, StatusCode.UNSET)],
)
async def test_only_server_faults_mark_the_span_as_an_error(
    code: grpc.StatusCode, status: StatusCode
) -> None:
    tracer, spans = provider()
    await call(tracer, Context(code=code))
    (span,) = spans.get_finished_spans()
    assert span.status.status_code is status and span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == code.value[0]


async def test_a_caller_that_did_not_sample_gets_no_span_but_its_ids_carry_on() -> None:
    tracer, spans = provider()
    seen = await call(tracer, Context((("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00"),)))
    assert spans.get_finished_spans() == ()
    assert f"{seen.trace_id:032x}" == TRACE_ID and not seen.trace_flags.sampled


async def test_a_sampler_other_than_the_default_decides_through_should_sample() -> None:
    off, dropped = provider(sampler=ALWAYS_OFF)
    await call(off, Context())
    assert dropped.get_finished_spans() == ()
    ratio, kept = provider(sampler=TraceIdRatioBased(1.0))
    await call(ratio, Context((("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)))
    (span,) = kept.get_finished_spans()
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT_ID


async def test_a_tracer_other_than_the_sdks_runs_the_handler_under_its_own_spans() -> None:
    seen = await call(trace.NoOpTracer(), Context())
    assert seen == trace.INVALID_SPAN_CONTEXT
