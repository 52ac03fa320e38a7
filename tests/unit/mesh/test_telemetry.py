"""Telemetry against an in-process MeshServer: spans, metrics and log lines.

The server is a MeshServer with the server layers a service gets (its interceptor stack as
built for production), the client a MeshChannel with the client observers a service gives its
channels, so every call type shows both sides: a client span and its child server span,
client and server counts.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from mesh.channel import MeshChannel, mesh_channel
from mesh.config import ServerSettings
from mesh.errors import ConfigError
from mesh.logs.server import RpcLogServerInterceptor
from mesh.logs.setup import JsonFormatter
from mesh.metrics.client import ClientMetrics
from mesh.metrics.endpoint import MetricsEndpoint
from mesh.metrics.families import rpc_families
from mesh.metrics.resilience import ResilienceCollector
from mesh.metrics.server import MetricsServerInterceptor
from mesh.registry import StaticDiscovery
from mesh.server import HostedService, MeshServer, ServerTelemetry
from mesh.telemetry import start_telemetry
from mesh.tracing.client import ClientTracing
from mesh.tracing.server import TracingServerInterceptor
from mesh.tracing.setup import TracingSettings, tracing_settings_from_env

SERVICE = "test.Echo"


async def unary(request: bytes, context: Any) -> bytes:
    if request == b"missing":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    if request == b"boom":
        raise RuntimeError("handler bug")
    return request


async def server_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    yield request
    yield request


async def client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return b"".join([item async for item in requests])


async def bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for item in requests:
        yield item


HANDLERS = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
    "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
    "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
}


@dataclass
class Rig:
    channel: MeshChannel
    target: str
    spans: InMemorySpanExporter
    registry: CollectorRegistry
    logs: io.StringIO

    def finished(self, kind: SpanKind) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.kind == kind]

    def count(self, side: str, method: str, type_: str, code: str) -> float:
        labels = {"grpc_service": SERVICE, "grpc_method": method, "grpc_type": type_, "grpc_code": code}
        return self.registry.get_sample_value(f"grpc_{side}_handled_total", labels) or 0.0

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.logs.getvalue().splitlines()]


@pytest.fixture
def rpc_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("echo"))
    logger = logging.getLogger("test.telemetry.rpc")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


@pytest.fixture
async def rig(rpc_logger: tuple[logging.Logger, io.StringIO]) -> AsyncIterator[Rig]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("test")
    registry = CollectorRegistry()
    logger, stream = rpc_logger
    layers = ServerTelemetry(
        tracing=TracingServerInterceptor(tracer),
        metrics=MetricsServerInterceptor(rpc_families(registry, "server")),
        log=RpcLogServerInterceptor(logger),
    )

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, HANDLERS)])

    server = MeshServer(ServerSettings("echo", 0), [HostedService(SERVICE, register)], telemetry=layers)
    port = await server.start()
    target = f"127.0.0.1:{port}"
    channel = mesh_channel(
        "echo",
        StaticDiscovery({"echo": [target]}),
        balancer="round_robin",
        outlier=None,
        observers=[ClientTracing(tracer), ClientMetrics(rpc_families(registry, "client"))],
    )
    try:
        yield Rig(channel, target, spans, registry, stream)
    finally:
        await channel.close()
        await server.stop(0)
        provider.shutdown()


async def requests(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def test_every_call_type_gets_a_client_and_a_child_server_span(rig: Rig) -> None:
    assert await rig.channel.unary_unary(f"/{SERVICE}/Unary")(b"a") == b"a"
    assert [r async for r in rig.channel.unary_stream(f"/{SERVICE}/ServerStream")(b"b")] == [b"b", b"b"]
    assert await rig.channel.stream_unary(f"/{SERVICE}/ClientStream")(requests(b"c", b"d")) == b"cd"
    bidi_call = rig.channel.stream_stream(f"/{SERVICE}/Bidi")(requests(b"e"))
    assert [r async for r in bidi_call] == [b"e"]
    assert await bidi_call.code() == grpc.StatusCode.OK

    methods = ("Unary", "ServerStream", "ClientStream", "Bidi")
    # Streaming spans end from done callbacks (client) and after the handler returns (server),
    # possibly after the client has read the stream's end: poll for them, bounded.
    for _ in range(200):
        if len(rig.finished(SpanKind.CLIENT)) == 4 and len(rig.finished(SpanKind.SERVER)) == 4:
            break
        await asyncio.sleep(0.01)
    servers = {span.name: span for span in rig.finished(SpanKind.SERVER)}
    assert sorted(servers) == sorted(f"{SERVICE}/{m}" for m in methods)
    clients = {span.name: span for span in rig.finished(SpanKind.CLIENT)}
    assert sorted(clients) == sorted(servers)
    for name, server in servers.items():
        client = clients[name]
        assert server.parent is not None and client.context is not None and server.context is not None
        assert server.parent.span_id == client.context.span_id
        assert server.context.trace_id == client.context.trace_id
        assert server.attributes is not None and server.attributes["rpc.grpc.status_code"] == 0


async def test_handled_counts_by_method_type_and_code_on_both_sides(rig: Rig) -> None:
    call = rig.channel.unary_unary(f"/{SERVICE}/Unary")
    await call(b"x")
    await call(b"y")
    for payload, code in ((b"missing", grpc.StatusCode.NOT_FOUND), (b"boom", grpc.StatusCode.UNKNOWN)):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(payload)
        assert raised.value.code() == code
    [r async for r in rig.channel.unary_stream(f"/{SERVICE}/ServerStream")(b"s")]

    for side in ("server", "client"):
        assert rig.count(side, "Unary", "unary", "OK") == 2
        assert rig.count(side, "Unary", "unary", "NOT_FOUND") == 1
        assert rig.count(side, "Unary", "unary", "UNKNOWN") == 1
    assert rig.count("server", "ServerStream", "server_stream", "OK") == 1
    started = {"grpc_service": SERVICE, "grpc_method": "Unary", "grpc_type": "unary"}
    assert rig.registry.get_sample_value("grpc_server_started_total", started) == 4
    assert rig.registry.get_sample_value("grpc_server_handling_seconds_count", started) == 4
    assert rig.registry.get_sample_value("grpc_server_in_flight_calls", started) == 0

    statuses = {
        s.attributes["rpc.grpc.status_code"]: s.status for s in rig.finished(SpanKind.SERVER) if s.attributes
    }
    assert statuses[grpc.StatusCode.NOT_FOUND.value[0]].status_code is StatusCode.UNSET  # the caller's fault
    assert statuses[grpc.StatusCode.UNKNOWN.value[0]].status_code is StatusCode.ERROR


async def test_in_flight_gauge_counts_an_open_stream(rig: Rig) -> None:
    call = rig.channel.stream_stream(f"/{SERVICE}/Bidi")()
    await call.write(b"1")
    assert await call.read() == b"1"
    labels = {"grpc_service": SERVICE, "grpc_method": "Bidi", "grpc_type": "bidi_stream"}
    assert rig.registry.get_sample_value("grpc_server_in_flight_calls", labels) == 1
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK
    assert rig.registry.get_sample_value("grpc_server_in_flight_calls", labels) == 0


async def test_health_checks_are_counted_but_neither_traced_nor_logged(rig: Rig) -> None:
    reply = await health_pb2_grpc.HealthStub(rig.channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert rig.spans.get_finished_spans() == ()
    assert rig.log_lines() == []
    labels = {
        "grpc_service": "grpc.health.v1.Health",
        "grpc_method": "Check",
        "grpc_type": "unary",
        "grpc_code": "OK",
    }
    assert rig.registry.get_sample_value("grpc_server_handled_total", labels) == 1


async def test_one_log_line_per_rpc_with_the_server_span_ids(rig: Rig) -> None:
    call = rig.channel.unary_unary(f"/{SERVICE}/Unary")
    await call(b"ok")
    with pytest.raises(grpc.aio.AioRpcError):
        await call(b"missing")
    ok, missing = rig.log_lines()
    spans = sorted(rig.finished(SpanKind.SERVER), key=lambda s: s.start_time or 0)
    for line, span, code, level in (
        (ok, spans[0], "OK", "info"),
        (missing, spans[1], "NOT_FOUND", "warning"),
    ):
        assert span.context is not None
        assert line["service"] == "echo" and line["rpc_service"] == SERVICE and line["method"] == "Unary"
        assert line["code"] == code and line["level"] == level
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
        assert line["peer"].startswith("ipv4:127.0.0.1:")
        assert line["trace_id"] == f"{span.context.trace_id:032x}"
        assert line["span_id"] == f"{span.context.span_id:016x}"


async def test_server_continues_a_traceparent_sent_by_an_untraced_caller(rig: Rig) -> None:
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with grpc.aio.insecure_channel(rig.target) as plain:
        metadata = (("traceparent", f"00-{trace_id}-{parent_id}-01"),)
        await plain.unary_unary(f"/{SERVICE}/Unary")(b"p", metadata=metadata)
    (server,) = rig.finished(SpanKind.SERVER)
    assert server.context is not None and server.parent is not None
    assert f"{server.context.trace_id:032x}" == trace_id
    assert f"{server.parent.span_id:016x}" == parent_id


def test_tracing_settings_follow_the_otel_environment() -> None:
    assert not tracing_settings_from_env({}, "order").enabled
    assert not tracing_settings_from_env({"OTEL_TRACES_EXPORTER": "otlp"}, "order").enabled
    console = tracing_settings_from_env({"OTEL_TRACES_EXPORTER": "console"}, "order")
    assert console.exporter == "console" and console.service_name == "order"
    otlp = tracing_settings_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, "order")
    assert (otlp.exporter, otlp.endpoint, otlp.insecure) == ("otlp", "http://127.0.0.1:4317", True)
    named = tracing_settings_from_env(
        {"OTEL_SERVICE_NAME": "shop-order", "OTEL_TRACES_EXPORTER": "console"}, "order"
    )
    assert named.service_name == "shop-order"
    disabled = {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    assert not tracing_settings_from_env(disabled, "order").enabled
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER"):
        tracing_settings_from_env({"OTEL_TRACES_EXPORTER": "jaeger"}, "order")


def test_tracing_off_installs_no_tracing_interceptor_and_metrics_serve_over_http() -> None:
    telemetry = start_telemetry(TracingSettings(), metrics_port=0)
    try:
        assert telemetry.provider is None
        assert telemetry.server.tracing is None
        assert isinstance(telemetry.server.metrics, MetricsServerInterceptor)
        assert isinstance(telemetry.server.log, RpcLogServerInterceptor)
        assert isinstance(telemetry.endpoint, MetricsEndpoint)
        assert not any(isinstance(o, ClientTracing) for o in telemetry.client_observers)
        assert any(isinstance(o, ClientMetrics) for o in telemetry.client_observers)
        assert any(isinstance(o, ResilienceCollector) for o in telemetry.client_observers)
        port = telemetry.meta["metrics_port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        assert "# TYPE grpc_server_handled_total counter" in text
        assert "# TYPE grpc_client_handling_seconds histogram" in text
    finally:
        telemetry.close()


def test_tracing_on_gives_the_server_a_tracing_layer_and_rpc_logs_can_be_off() -> None:
    telemetry = start_telemetry(TracingSettings(exporter="console"), metrics_port=None, rpc_logs=False)
    try:
        assert isinstance(telemetry.server.tracing, TracingServerInterceptor)
        assert telemetry.server.log is None
        assert any(isinstance(o, ClientTracing) for o in telemetry.client_observers)
        assert telemetry.endpoint is None and telemetry.meta == {}
    finally:
        telemetry.close()
