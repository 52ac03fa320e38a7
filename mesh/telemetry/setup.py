"""Everything a process needs for telemetry, built once in one place and closed on exit.

:func:`start_telemetry` returns a :class:`Telemetry` holding the process's own
CollectorRegistry, the tracer provider (or none), the ``/metrics`` endpoint, the
interceptors to hand to the server and the observers (:mod:`mesh.observer`) to hand to every
mesh channel: client metrics and spans come from the channel's own call objects, which costs
no task per call as a grpc.aio client interceptor would. Interceptor order on the server is
tracing (outermost, so the span is current for the rest), metrics, RPC log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import grpc.aio
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from mesh.interceptors.metrics_server import MetricsServerInterceptor
from mesh.interceptors.rpc_log import RpcLogServerInterceptor
from mesh.interceptors.tracing_server import TracingServerInterceptor
from mesh.observer import CallObserver
from mesh.telemetry.client_metrics import ClientMetrics
from mesh.telemetry.client_tracing import ClientTracing
from mesh.telemetry.metrics import MetricsEndpoint, rpc_families
from mesh.telemetry.resilience_metrics import ResilienceCollector
from mesh.telemetry.tracing import TracingSettings, tracer_provider

log = logging.getLogger(__name__)

METRICS_PORT_META = "metrics_port"


@dataclass
class Telemetry:
    """A process's telemetry: interceptors and observers to install, meta to publish, what to close.

    ``client_observers`` go to ``mesh_channel(..., observers=...)``: ``grpc_client_*``
    metrics, client spans when tracing is on (one per call; a retried call also gets one per
    attempt), and the ``mesh_*`` resilience metrics of every channel built with them.
    """

    registry: CollectorRegistry
    provider: TracerProvider | None
    endpoint: MetricsEndpoint | None
    server_interceptors: list[grpc.aio.ServerInterceptor] = field(default_factory=list)
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
    """Build the registry, tracer, interceptors and observers; serve ``/metrics`` unless the port is None."""
    registry = CollectorRegistry()
    provider = tracer_provider(tracing)
    server: list[grpc.aio.ServerInterceptor] = []
    if provider is not None:
        server.append(TracingServerInterceptor(provider.get_tracer("mesh")))
    server.append(MetricsServerInterceptor(rpc_families(registry, "server")))
    client = client_observers(registry, provider)
    if rpc_logs:
        server.append(RpcLogServerInterceptor())
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
