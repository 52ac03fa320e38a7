"""An OTLP/gRPC trace receiver feeding the dashboard's :class:`~mesh.dashboard.traces.TraceStore`.

It serves ``opentelemetry.proto.collector.trace.v1.TraceService/Export`` with grpc.aio in the
dashboard's own event loop, so the services' standard exporter (``OTEL_EXPORTER_OTLP_ENDPOINT=
http://127.0.0.1:<otlp_port>``, mesh/tracing/setup.py) reaches it with no collector between.
Requests are taken as raw bytes (a generic handler: no generated servicer class to type) and
parsed here; a request that does not parse is refused with INVALID_ARGUMENT and counted, and
never stops the receiver.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from mesh.dashboard.traces import TraceStore, decode_export
from mesh.server.runtime import bind_port

log = logging.getLogger(__name__)

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class OtlpReceiver:
    """Keeps every exported span in ``store``; :meth:`start` binds ``host:port``."""

    def __init__(self, store: TraceStore) -> None:
        self.store = store
        self.port = 0
        self.exports = 0
        self.refused = 0
        self._server: Any = None

    def handle(self, payload: bytes) -> None:
        """One export request's bytes into the store (raises DecodeError when they do not parse)."""
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(payload)
        self.store.add(decode_export(request))
        self.exports += 1

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(self._export)  # bytes in, bytes out
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {"Export": handler})])
        self.port = bind_port(server, f"{host}:{port}")  # PortUnavailable names the address
        await server.start()
        self._server = server
        return self.port

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(0.5)

    async def _export(self, request: bytes, context: Any) -> bytes:
        try:
            self.handle(request)
        except DecodeError as error:
            self.refused += 1
            log.warning("an OTLP export did not parse", extra={"error": str(error)})
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not an ExportTraceServiceRequest")
        return b""  # an empty ExportTraceServiceResponse: everything accepted
