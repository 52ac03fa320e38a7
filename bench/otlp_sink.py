"""A minimal OTLP/gRPC trace receiver for benchmarks: who was called, when, seen by the caller.

It serves ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` with grpc.aio on the
machine's 127.0.0.1 and keeps, from one service's spans only (``service.name``, default
``gateway``), the CLIENT spans that name an endpoint (``server.address``/``server.port``,
docs/metrics.md): one :class:`Attempt` per attempt on the wire, with its start time.

Requests are taken as raw bytes and parsed only while :attr:`OtlpSink.recording` is on, so a
phase that does not need spans (a throughput measurement) pays almost nothing for the
exporters it cannot switch off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
_CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT


@dataclass(frozen=True)
class Attempt:
    """One attempt of the caller's: where it went, when it started (ns, wall clock), its code."""

    start_ns: int
    target: str
    code: int


@dataclass
class OtlpSink:
    """Keeps the caller's attempts; :meth:`start` binds a free port on 127.0.0.1."""

    caller: str = "gateway"
    recording: bool = False
    attempts: list[Attempt] = field(default_factory=list)
    exports: int = 0
    """Export requests received (recording or not)."""
    port: int = 0
    _server: Any = None

    async def start(self) -> OtlpSink:
        self._server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(self._export)  # bytes in, bytes out
        self._server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE, {"Export": handler})]
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(None)

    async def _export(self, request: bytes, context: Any) -> bytes:
        self.exports += 1
        if self.recording:
            self._keep(trace_service_pb2.ExportTraceServiceRequest.FromString(request))
        return b""  # an empty ExportTraceServiceResponse: everything accepted

    def _keep(self, request: Any) -> None:
        for resource_spans in request.resource_spans:
            name = next(
                (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"),
                "",
            )
            if name != self.caller:
                continue
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    if span.kind != _CLIENT:
                        continue
                    address, port, code = "", 0, -1
                    for attribute in span.attributes:
                        if attribute.key == "server.address":
                            address = attribute.value.string_value
                        elif attribute.key == "server.port":
                            port = attribute.value.int_value
                        elif attribute.key == "rpc.grpc.status_code":
                            code = attribute.value.int_value
                    if address:  # an attempt (a retried call's own span names no endpoint)
                        self.attempts.append(Attempt(span.start_time_unix_nano, f"{address}:{port}", code))
