"""The server every service runs: health, reflection, interceptors, hooks, graceful stop.

One implementation for all services means the shutdown order that keeps rolling restarts
lossless lives in one place: hooks withdraw the instance (registry deregistration), health
turns NOT_SERVING, the server stops accepting calls and lets in-flight ones finish within the
grace period, then whatever is left is cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from mesh.config import ServerSettings
from mesh.server.deadline import DeadlineInterceptor
from mesh.server.lifecycle import BoundServer, LifecycleHook

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


@dataclass(frozen=True)
class HostedService:
    """A proto service this process serves: its full name and how to add it to a server."""

    name: str
    register: Callable[[grpc.aio.Server], None]


@dataclass
class MeshServer:
    """A started grpc.aio server with its health service and lifecycle hooks."""

    settings: ServerSettings
    services: Sequence[HostedService]
    interceptors: Sequence[grpc.aio.ServerInterceptor] = ()
    hooks: Sequence[LifecycleHook] = ()
    meta: dict[str, str] = field(default_factory=dict)
    port: int = 0
    _server: grpc.aio.Server | None = None
    _health: HealthServicer | None = None
    _stopping: bool = False

    async def start(self) -> int:
        """Bind, start serving and run the hooks' on_started; returns the bound port."""
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(
            # Deadline first: every handler publishes its deadline to the calls it makes.
            interceptors=[DeadlineInterceptor(), *self.interceptors],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        for service in self.services:
            service.register(server)
        names = tuple(s.name for s in self.services)
        reflection.enable_server_reflection((*names, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
        self.port = server.add_insecure_port(f"{self.settings.host}:{self.settings.port}")
        if self.port == 0:
            raise OSError(f"cannot bind {self.settings.host}:{self.settings.port}")
        await server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        for name in ("", *names):
            await health.set(name, serving)
        self._server, self._health = server, health
        bound = BoundServer(
            service_name=self.settings.service_name,
            host=self.settings.address,
            port=self.port,
            hosted_services=names,
            version=self.settings.version,
            tags=self.settings.tags,
            meta=dict(self.meta),
        )
        for hook in self.hooks:
            await hook.on_started(bound)
        log.info(
            "serving",
            extra={"event": "serving", "address": f"{self.settings.address}:{self.port}", "services": names},
        )
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Withdraw, turn NOT_SERVING, drain in-flight calls for ``grace`` seconds, stop."""
        if self._server is None or self._stopping:
            return
        self._stopping = True
        grace = self.settings.grace_seconds if grace is None else grace
        log.info("stopping", extra={"event": "stopping", "grace_seconds": grace})
        for hook in reversed(self.hooks):
            try:
                await hook.on_stopping()
            except Exception:
                log.exception("lifecycle hook failed during shutdown; stopping anyway")
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
        log.info("stopped", extra={"event": "stopped"})

    async def wait_for_termination(self) -> None:
        """Return once the server has stopped."""
        if self._server is not None:
            await self._server.wait_for_termination()
