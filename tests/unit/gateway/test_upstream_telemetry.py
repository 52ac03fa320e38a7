"""The gateway's upstream mesh channels carry the process's client telemetry (metrics, spans)."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from gateway.upstream import MeshChannelFactory
from mesh.registry import StaticDiscovery
from mesh.telemetry import client_observers
from mesh.tracing.client import ATTEMPT_ATTRIBUTE

SERVICE = "test.Echo"


async def echo(request: bytes, context: Any) -> bytes:
    return request


async def test_upstream_calls_get_client_metrics_and_spans_under_the_request_traceparent() -> None:
    server = grpc.aio.server()
    handlers = {"Say": grpc.unary_unary_rpc_method_handler(echo)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    registry = CollectorRegistry()
    factory = MeshChannelFactory(
        StaticDiscovery({"echo": [f"127.0.0.1:{port}"]}), observers=client_observers(registry, provider)
    )
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # as gateway/headers.py sends
    try:
        say = factory.channel("echo").unary_unary(f"/{SERVICE}/Say")
        assert await say(b"hi", metadata=(("traceparent", given),), timeout=5) == b"hi"
        labels = {"grpc_service": SERVICE, "grpc_method": "Say", "grpc_type": "unary", "grpc_code": "OK"}
        assert registry.get_sample_value("grpc_client_handled_total", labels) == 1
        assert registry.get_sample_value("mesh_endpoints", {"target_service": "echo"}) == 1
    finally:
        await factory.close()
        await server.stop(None)
        provider.shutdown()
    (call,) = spans.get_finished_spans()  # one attempt: one span, which is also the attempt's
    assert (call.attributes or {})[ATTEMPT_ATTRIBUTE] == 1
    assert call.parent is not None and call.parent.span_id == 0xB7AD6B7169203331
    assert call.context is not None and call.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
