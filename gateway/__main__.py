"""``python -m gateway``: the REST/JSON gateway in front of the shop's gRPC services.

Settings are read from the environment once, here. The routes are built from the
descriptors before the port opens, so a bad rule or a conflict fails the start (exit code
2, with the reason). Metrics are served on their own listener (``GATEWAY_METRICS_PORT``,
bound to ``GATEWAY_HOST`` as the services bind theirs), and with ``CONSUL_HTTP_ADDR`` the
gateway registers as service ``gateway`` with meta ``metrics_port`` and an HTTP check of
``/readyz``. SIGTERM/SIGINT: /readyz turns 503, the Consul entry is withdrawn first, then the
listener closes and in-flight requests finish within the grace period; the upstream
channels and the metrics listener close last.

The gateway is a mesh identity like any service: before it listens it takes its certificate
for the name ``gateway`` from the local Consul agent (:func:`mesh.connect.setup.connect_workload`,
with ``CONSUL_HTTP_TOKEN``/``_FILE``), and every upstream call is mTLS. ``MESH_INSECURE=1``
(plaintext inside the mesh, for local debugging) is announced by a warning at start and by
meta ``mtls=off`` in its Consul entry.

With ``GATEWAY_TLS_CERT_FILE`` and ``GATEWAY_TLS_KEY_FILE`` the client-facing listener serves
HTTPS (and Consul checks it over HTTPS); HTTP otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys

from gateway.app import Gateway
from gateway.metrics import GatewayMetrics
from gateway.registration import SERVICE_NAME, GatewayRegistrar, gateway_instance
from gateway.router import RouteConflict
from gateway.rules import RuleError
from gateway.server import HttpServer, ServerLimits
from gateway.settings import GatewaySettings, edge_tls_context, settings_from_env
from gateway.upstream import MeshChannelFactory
from mesh.connect.setup import ConnectedWorkload, connect_workload
from mesh.errors import ConfigError, RegistryUnavailable
from mesh.logs.setup import configure_logging
from mesh.metrics.endpoint import MetricsEndpoint
from mesh.registry import make_discovery
from mesh.telemetry import client_observers
from mesh.tracing.setup import tracer_provider

log = logging.getLogger("gateway")


async def run(settings: GatewaySettings) -> None:
    tls = edge_tls_context(settings.tls_cert_file, settings.tls_key_file) if settings.https else None
    # The gateway's mesh identity (None, after a loud warning, with MESH_INSECURE=1).
    workload = await connect_workload(SERVICE_NAME, settings.consul_address, settings.security)
    try:
        await serve(settings, tls, workload)
    finally:
        if workload is not None:
            await workload.close()


async def serve(
    settings: GatewaySettings, tls: ssl.SSLContext | None, workload: ConnectedWorkload | None
) -> None:
    token = settings.security.consul_token
    static = {name: [target] for name, target in settings.upstreams.items()}
    metrics = GatewayMetrics()
    provider = tracer_provider(settings.tracing)
    observers = client_observers(metrics.registry, provider)  # upstream calls: metrics, spans
    factory = MeshChannelFactory(
        make_discovery(settings.consul_address, static, token=token, stale=settings.consul_stale),
        settings.policy,
        observers,
        identity=workload.identity if workload is not None else None,
    )
    gateway = Gateway(settings, factory, metrics=metrics)
    limits = settings.limits
    server = HttpServer(
        gateway.handle,
        ServerLimits(
            limits.max_header_bytes,
            limits.max_body_bytes,
            settings.keepalive_seconds,
            settings.header_timeout_seconds,
            settings.max_connections,
        ),
        on_close=metrics.connection_closed,
    )
    metrics.open_connections.set_function(lambda: server.open_connections)
    endpoint: MetricsEndpoint | None = None
    registrar: GatewayRegistrar | None = None
    try:
        endpoint = MetricsEndpoint(metrics.registry, settings.host, settings.metrics_port)
        port = await server.start(settings.host, settings.port, tls)
        log.info(
            "gateway listening",
            extra={
                "address": f"{settings.host}:{port}",
                "scheme": "https" if tls is not None else "http",
                "metrics_address": f"{settings.host}:{endpoint.port}",
                "routes": len(gateway.routes),
                "upstreams": gateway.upstreams,
            },
        )
        if settings.consul_address:
            registrar = GatewayRegistrar(settings.consul_address, https=settings.https, token=token)
            instance = gateway_instance(settings.address, port, endpoint.port, mtls=settings.security.mtls)
            try:
                await registrar.register(instance)
            except RegistryUnavailable as error:  # the registrar keeps retrying in the background
                log.warning("could not register %s yet (%s); retrying in the background", instance.id, error)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("gateway stopping")
        gateway.stopping = True
        if registrar is not None:
            await registrar.on_stopping()  # withdrawn first; never raises
            registrar = None
        await server.close(settings.grace_seconds)
    finally:
        if registrar is not None:  # stopped by an error: still withdraw the entry
            await registrar.on_stopping()
        await factory.close()
        if endpoint is not None:
            endpoint.close()
        if provider is not None:
            provider.shutdown()  # flush the last spans


def main() -> int:
    try:
        settings = settings_from_env(os.environ)
    except ConfigError as error:
        print(f"gateway: {error}", file=sys.stderr)
        return 2
    configure_logging("gateway", settings.log_level)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio still works
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(run(settings))
    except (RuleError, RouteConflict, ConfigError) as error:
        log.error("gateway cannot start: %s", error)
        print(f"gateway: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
