"""A light mesh process for the Prometheus tests: served, instrumented and registered for real.

Run as ``python -m tests.integration.prometheus.mesh_process`` with ``MESH_PORT``,
``CONSUL_HTTP_ADDR`` and ``PROC_NAME`` (its Consul service name). It serves the discovery
tests' echo service through :func:`mesh.server.serve` with the process telemetry of
:func:`mesh.telemetry.start_telemetry` (``/metrics`` on a free port, published in its Consul
meta as ``metrics_port``) and a :class:`~mesh.registry.consul.ConsulRegistrar`, as a shop
service is. The shop's services need databases and a broker; this needs neither and starts
in about a second.

With ``CALL_SERVICE`` set, it also calls that service through a mesh channel (Consul
discovery, the telemetry's observers) every ``CALL_INTERVAL_MS``: three ``Echo`` calls that
succeed for every ``Fail`` call answering INTERNAL, so the caller's ``grpc_client_*`` and
``mesh_*`` series, and the callee's ``grpc_server_*`` series, all exist and all move.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import grpc

from tests.integration.discovery.echo_server import ECHO, FAIL, SERVICE, handlers


async def call_forever(channel: object, interval: float) -> None:
    """Echo, Echo, Echo, Fail(INTERNAL), and again; errors are the point, never raised."""
    echo = channel.unary_unary(ECHO)  # type: ignore[attr-defined]
    fail = channel.unary_unary(FAIL)  # type: ignore[attr-defined]
    turn = 0
    while True:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await (fail(b"INTERNAL", timeout=2) if turn % 4 == 3 else echo(b"ping", timeout=2))
        turn += 1
        await asyncio.sleep(interval)


async def run() -> None:
    from mesh.channel.surface import mesh_channel
    from mesh.config import server_settings_from_env
    from mesh.registry.consul import ConsulDiscovery, ConsulRegistrar
    from mesh.server import HostedService, serve
    from mesh.telemetry import start_telemetry
    from mesh.tracing.setup import TracingSettings

    name = os.environ["PROC_NAME"]
    settings = server_settings_from_env(os.environ, name, 0)
    consul_address = os.environ["CONSUL_HTTP_ADDR"]
    telemetry = start_telemetry(TracingSettings(), metrics_port=0, rpc_logs=False)
    registrar = ConsulRegistrar(consul_address, check_interval=1.0)
    discovery = ConsulDiscovery(consul_address)
    caller: asyncio.Task[None] | None = None
    target = os.environ.get("CALL_SERVICE", "")
    if target:
        channel = mesh_channel(target, discovery, observers=telemetry.client_observers)
        interval = int(os.environ.get("CALL_INTERVAL_MS", "50")) / 1000
        caller = asyncio.create_task(call_forever(channel, interval))

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((handlers(name),))

    try:
        await serve(
            settings,
            [HostedService(SERVICE, register)],
            telemetry=telemetry.server,
            hooks=[registrar],
            meta=telemetry.meta,
        )
    finally:
        if caller is not None:
            caller.cancel()
        await discovery.close()
        telemetry.close()


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
