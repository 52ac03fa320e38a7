"""Server bootstrap shared by every service: see :func:`serve`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

import grpc

from mesh.config import ServerSettings
from mesh.server.lifecycle import BoundServer, LifecycleHook
from mesh.server.runtime import HostedService, MeshServer, ServerTelemetry
from mesh.server.signals import install_stop_signals

if TYPE_CHECKING:  # mesh.connect imports mesh.server's modules
    from mesh.connect.setup import ConnectedWorkload

__all__ = ["BoundServer", "HostedService", "LifecycleHook", "MeshServer", "ServerTelemetry", "serve"]


async def serve(
    settings: ServerSettings,
    services: Sequence[HostedService],
    *,
    telemetry: ServerTelemetry | None = None,
    status: grpc.aio.ServerInterceptor | None = None,
    hooks: Sequence[LifecycleHook] = (),
    meta: dict[str, str] | None = None,
    security: ConnectedWorkload | None = None,
) -> None:
    """Run a server until SIGTERM/SIGINT, then stop it gracefully (see MeshServer.stop).

    ``telemetry`` and ``status`` are the optional layers of the interceptor stack that
    :class:`MeshServer` builds (deadline -> tracing -> metrics -> log -> intentions -> status);
    ``security`` (:func:`mesh.connect.setup.connect_workload`) turns mTLS on.
    """
    server = MeshServer(
        settings,
        services,
        telemetry=telemetry or ServerTelemetry(),
        status=status,
        hooks=hooks,
        meta=dict(meta or {}),
        security=security,
    )
    await server.start()
    install_stop_signals(asyncio.get_running_loop(), server.stop)
    await server.wait_for_termination()
