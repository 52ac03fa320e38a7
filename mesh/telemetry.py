"""A process's telemetry, assembled from its three concerns, built once and closed on exit.

Tracing (:mod:`mesh.tracing`), metrics (:mod:`mesh.metrics`) and logs (:mod:`mesh.logs`) each
own their server interceptor and, where there is one, their mesh-channel observer; this module
only puts them together for a process.

:func:`start_telemetry` returns a :class:`Telemetry` holding the process's own
CollectorRegistry, the tracer provider (or none), the ``/metrics`` endpoint, the
interceptors to hand to the server and the observers (:mod:`mesh.observer`) to hand to every
mesh channel: client metrics and spans come from the channel's own call objects, which costs
no task per call as a grpc.aio client interceptor would. The server layers are handed over as
a :class:`~mesh.server.ServerTelemetry`, by concern; where they sit in the interceptor stack
is decided by :class:`~mesh.server.MeshServer` alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from mesh.logs.server import RpcLogServerInterceptor
from mesh.metrics.client import ClientMetrics
from mesh.metrics.endpoint import MetricsEndpoint
from mesh.metrics.families import rpc_families
from mesh.metrics.resilience import ResilienceCollector
from mesh.metrics.server import MetricsServerInterceptor
from mesh.observer import CallObserver
from mesh.server.runtime import ServerTelemetry
from mesh.tracing.client import ClientTracing
from mesh.tracing.server import TracingServerInterceptor
from mesh.tracing.setup import TracingSettings, tracer_provider

log = logging.getLogger(__name__)

METRICS_PORT_META = "metrics_port"


@dataclass
class Telemetry:
    """A process's telemetry: server layers and observers to install, meta to publish, what to close.

    ``server`` goes to ``serve(..., telemetry=...)``: tracing (when on), metrics, RPC logs.
    ``client_observers`` go to ``mesh_channel(..., observers=...)``: ``grpc_client_*``
    metrics, client spans when tracing is on (one per call; a retried call also gets one per
    attempt), and the ``mesh_*`` resilience metrics of every channel built with them.
    """

    registry: CollectorRegistry
    provider: TracerProvider | None
    endpoint: MetricsEndpoint | None
    server: ServerTelemetry = field(default_factory=ServerTelemetry)
    client_observers: list[CallObserver] = field(default_factory=list)

    @property
    def meta(self) -> dict[str, str]:
        """Registry meta: where this instance's metrics are scraped."""
        return {METRICS_PORT_META: str(self.endpoint.port)} if self.endpoint else {}

    def close(self) -> None:
        """Stop serving metrics and flush the spans not yet exported."""
        if self.endpoint is not None:
            self.endpoint.close()
        if self.provider is not None:
            self.provider.shutdown()


def start_telemetry(
    tracing: TracingSettings,
    *,
    metrics_host: str = "127.0.0.1",
    metrics_port: int | None = 0,
    rpc_logs: bool = True,
) -> Telemetry:
    """Build the registry, tracer, server layers and observers; serve ``/metrics`` unless the port is None."""
    registry = CollectorRegistry()
    provider = tracer_provider(tracing)
    server = ServerTelemetry(
        tracing=None if provider is None else TracingServerInterceptor(provider.get_tracer("mesh")),
        metrics=MetricsServerInterceptor(rpc_families(registry, "server")),
        log=RpcLogServerInterceptor() if rpc_logs else None,
    )
    client = client_observers(registry, provider)
    endpoint = None if metrics_port is None else MetricsEndpoint(registry, metrics_host, metrics_port)
    if endpoint is not None:
        log.info("metrics", extra={"event": "metrics", "address": f"{metrics_host}:{endpoint.port}"})
    return Telemetry(registry, provider, endpoint, server, client)


def client_observers(registry: CollectorRegistry, provider: TracerProvider | None) -> list[CallObserver]:
    """The observers a process gives its mesh channels; registers their metrics in ``registry``.

    Also what the gateway uses for its upstream channels (it has its own registry).
    """
    observers: list[CallObserver] = [ClientMetrics(rpc_families(registry, "client"))]
    if provider is not None:
        observers.append(ClientTracing(provider.get_tracer("mesh")))
    observers.append(ResilienceCollector(registry))
    return observers
