"""The server every service runs: health, reflection, interceptors, hooks, graceful stop.

One implementation for all services means the shutdown order that keeps rolling restarts
lossless lives in one place: hooks withdraw the instance (registry deregistration), health
turns NOT_SERVING, the server stops accepting calls and lets in-flight ones finish within the
grace period, then whatever is left is cancelled.

The interceptor stack is built here too, and only here (:meth:`MeshServer.interceptor_stack`),
outermost first: deadline -> tracing -> metrics -> log -> intentions -> status. It is applied
to each method's handler once, when the services are added (:mod:`mesh.server.layered`), not
by grpc.aio's interceptor chain on every call.

- deadline first, so everything below (the handler's own calls included) runs under it;
- tracing next, so its span is current while metrics, the log line and the handler run (the
  log line carries its trace id);
- metrics and log outside status, so they see the code the client gets: the status layer
  (the application's, e.g. services' DomainError -> google.rpc.Status) turns a raised error
  into an abort whose code the outer layers read back; were it outside them, they would
  record UNKNOWN for every NOT_FOUND.

- intentions (under mTLS) inside the telemetry layers, so a refused caller is counted and
  logged like any other PERMISSION_DENIED.

Each telemetry layer is optional (tracing off installs no tracing interceptor at all).

Under mTLS (``security``, :mod:`mesh.connect`) the service port requires a client certificate
chained to the current roots (dynamic credentials: a renewed certificate serves new
connections at once), and a second, plaintext listener on ``settings.health_port`` serves
``grpc.health.v1`` and nothing else: Consul 1.8.7's gRPC check has no client certificate to
present, and the launcher's readiness probe dials it too. Its port is published in the
instance's meta (``health_port``), where the registrar points Consul's check.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from mesh.config import ServerSettings
from mesh.server.deadline import DeadlineInterceptor
from mesh.server.layered import LayeredRegistrar
from mesh.server.lifecycle import BoundServer, LifecycleHook
from mesh.server.wrap import HandlerLayer

if TYPE_CHECKING:  # mesh.connect imports mesh.server's modules
    from mesh.connect.setup import ConnectedWorkload

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

EXIT_PORT_UNAVAILABLE = 98
"""A process's exit status when a listener could not bind (Linux's EADDRINUSE): whoever chose
the port may choose another and start the process again, as the launcher does for ports it
picked itself (another process can take a free port between its probe and the bind)."""


class PortUnavailable(OSError):
    """A listener could not bind its address: the port is taken, or the address is not this host's."""


def bind_port(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None = None
) -> int:
    """Add a listener on ``address`` (TLS with ``credentials``); the bound port, or PortUnavailable.

    grpc says only "Failed to bind" (a RuntimeError, or port 0 from older releases); the
    typed error lets an entry point exit with :data:`EXIT_PORT_UNAVAILABLE`.
    """
    port: int
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as error:
        raise PortUnavailable(
            f"cannot bind {address}: the port is taken or the address is not this host's"
        ) from error
    if port == 0:
        raise PortUnavailable(f"cannot bind {address}")
    return port


@dataclass(frozen=True)
class HostedService:
    """A proto service this process serves: its full name and how to add it to a server.

    ``register`` is a generated ``add_*Servicer_to_server``; it is given a
    :class:`~mesh.server.layered.LayeredRegistrar` standing in for the grpc.aio server.
    """

    name: str
    register: Callable[[grpc.aio.Server], None]


@dataclass(frozen=True)
class ServerTelemetry:
    """A process's server-side telemetry layers (:func:`mesh.telemetry.start_telemetry`); ``None`` is off."""

    tracing: HandlerLayer | None = None
    metrics: HandlerLayer | None = None
    log: HandlerLayer | None = None


@dataclass
class MeshServer:
    """A started grpc.aio server with its health service and lifecycle hooks.

    ``status`` is the application's own layer that turns its errors into statuses; it runs
    innermost, next to the handler (see the module docstring for the whole order).
    """

    settings: ServerSettings
    services: Sequence[HostedService]
    telemetry: ServerTelemetry = field(default_factory=ServerTelemetry)
    status: HandlerLayer | None = None
    hooks: Sequence[LifecycleHook] = ()
    meta: dict[str, str] = field(default_factory=dict)
    security: ConnectedWorkload | None = None
    port: int = 0
    health_port: int = 0
    _server: grpc.aio.Server | None = None
    _health_server: grpc.aio.Server | None = None
    _health: HealthServicer | None = None
    _stopping: bool = False

    def interceptor_stack(self) -> list[HandlerLayer]:
        """The server's interceptors, outermost first: deadline, tracing, metrics, log, intentions, status."""
        telemetry = self.telemetry
        guard = self.security.guard if self.security is not None else None
        layers = (
            DeadlineInterceptor(),
            telemetry.tracing,
            telemetry.metrics,
            telemetry.log,
            guard,
            self.status,
        )
        return [layer for layer in layers if layer is not None]

    async def start(self) -> int:
        """Bind, start serving and run the hooks' on_started; returns the bound port."""
        limit = self.settings.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        layered = LayeredRegistrar(server, self.interceptor_stack())
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, layered)
        for service in self.services:
            service.register(layered)
        names = tuple(s.name for s in self.services)
        # What reflection.enable_server_reflection does for a grpc.aio server, given the registrar.
        reflected = (*names, HEALTH_SERVICE, reflection.SERVICE_NAME)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(reflected), layered
        )
        address = f"{self.settings.host}:{self.settings.port}"
        credentials = self.security.identity.server_credentials() if self.security is not None else None
        self.port = bind_port(server, address, credentials)
        meta = dict(self.meta)
        if self.security is not None:
            self._health_server = await self._serve_health(health)
            meta.update(health_port=str(self.health_port), mtls="on")
        else:
            self.health_port = self.port
            meta["mtls"] = "off"
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
            meta=meta,
        )
        for hook in self.hooks:
            await hook.on_started(bound)
        log.info(
            "serving",
            extra={"event": "serving", "address": f"{self.settings.address}:{self.port}", "services": names},
        )
        return self.port

    async def _serve_health(self, health: HealthServicer) -> grpc.aio.Server:
        """The plaintext health-only listener (see the module docstring), sharing ``health``."""
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        address = f"{self.settings.host}:{self.settings.health_port}"
        self.health_port = bind_port(server, address)
        await server.start()
        return server

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
        if self._health_server is not None:
            await self._health_server.stop(None)
        log.info("stopped", extra={"event": "stopped"})

    async def wait_for_termination(self) -> None:
        """Return once the server has stopped."""
        if self._server is not None:
            await self._server.wait_for_termination()
