"""Server bootstrap shared by every service: see :func:`serve`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from mesh.config import ServerSettings
from mesh.server.lifecycle import BoundServer, LifecycleHook
from mesh.server.runtime import HostedService, MeshServer
from mesh.server.signals import install_stop_signals

__all__ = ["BoundServer", "HostedService", "LifecycleHook", "MeshServer", "serve"]


async def serve(
    settings: ServerSettings,
    services: Sequence[HostedService],
    *,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    hooks: Sequence[LifecycleHook] = (),
    meta: dict[str, str] | None = None,
) -> None:
    """Run a server until SIGTERM/SIGINT, then stop it gracefully (see MeshServer.stop)."""
    server = MeshServer(settings, services, interceptors, hooks, dict(meta or {}))
    await server.start()
    install_stop_signals(asyncio.get_running_loop(), server.stop)
    await server.wait_for_termination()
