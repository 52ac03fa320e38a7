"""An OTLP/gRPC trace receiver served in-process: what the tracing tests read exported spans from."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2


@dataclass
class Received:
    service: str
    span: trace_pb2.Span


@dataclass
class Receiver(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    """Collects every exported span with its resource's service.name."""

    spans: list[Received] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def Export(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                self.spans.extend(Received(attributes["service.name"], span) for span in scope.spans)
        self.changed.set()
        return trace_service_pb2.ExportTraceServiceResponse()

    async def wait_for(self, done: Any, within: float) -> None:
        deadline = time.monotonic() + within
        while not done():
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                seen = sorted({(r.service, r.span.name, r.span.trace_id.hex()) for r in self.spans})
                raise AssertionError(f"spans expected within {within}s never came; got {seen}") from None


@asynccontextmanager
async def serve_receiver() -> AsyncIterator[tuple[Receiver, int]]:
    """A :class:`Receiver` served with grpc.aio on 127.0.0.1; yields it and its port."""
    server = grpc.aio.server()
    collector = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield collector, port
    finally:
        await server.stop(None)
