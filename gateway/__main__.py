"""``python -m gateway``: the REST/JSON gateway in front of the shop's gRPC services.

Settings are read from the environment once, here. The routes are built from the
descriptors before the port opens, so a bad rule or a conflict fails the start (exit code
2, with the reason); SIGTERM/SIGINT close the listener, let in-flight requests finish within
the grace period, then close the upstream channels.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from gateway.app import Gateway
from gateway.metrics import GatewayMetrics
from gateway.router import RouteConflict
from gateway.rules import RuleError
from gateway.server import HttpServer, ServerLimits
from gateway.settings import GatewaySettings, settings_from_env
from gateway.upstream import MeshChannelFactory
from mesh.errors import ConfigError
from mesh.registry import make_discovery
from mesh.telemetry.logs import configure_logging
from mesh.telemetry.setup import client_observers
from mesh.telemetry.tracing import tracer_provider

log = logging.getLogger("gateway")


async def run(settings: GatewaySettings) -> None:
    static = {name: [target] for name, target in settings.upstreams.items()}
    metrics = GatewayMetrics()
    provider = tracer_provider(settings.tracing)
    observers = client_observers(metrics.registry, provider)  # upstream calls: metrics, spans
    factory = MeshChannelFactory(make_discovery(settings.consul_address, static), settings.policy, observers)
    gateway = Gateway(settings, factory, metrics=metrics)
    limits = settings.limits
    server = HttpServer(
        gateway.handle,
        ServerLimits(limits.max_header_bytes, limits.max_body_bytes, settings.keepalive_seconds),
    )
    port = await server.start(settings.host, settings.port)
    log.info(
        "gateway listening",
        extra={
            "address": f"{settings.host}:{port}",
            "routes": len(gateway.routes),
            "upstreams": gateway.upstreams,
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        log.info("gateway stopping")
        await server.close(settings.grace_seconds)
    finally:
        await factory.close()
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
