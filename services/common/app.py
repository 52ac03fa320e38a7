"""Start-up shared by every service's ``__main__``: logs, database, discovery, serve.

A service supplies only what is its own (its migrations and how to build its hosted services
from a :class:`ServiceContext`); the order of start-up and shutdown lives here once:
database and discovery open first and close last, the mesh channels a service asked for close
after the server has drained, and with Consul configured the instance registers itself (and
withdraws first on shutdown).

Under mTLS (the default) the process first takes its certificate for its own name from the
local Consul agent (:func:`mesh.connect.setup.connect_workload`): the server then requires
client certificates and asks intentions who may call, and every channel it opens presents
that identity and checks the server's. ``MESH_INSECURE=1`` runs plaintext, loudly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop
from prometheus_client import CollectorRegistry

from mesh.channel import MeshChannel, mesh_channel
from mesh.connect.setup import connect_workload
from mesh.connect.workload import WorkloadIdentity
from mesh.logs.setup import configure_logging
from mesh.observer import CallObserver
from mesh.registry import ConsulRegistrar, Discovery, make_discovery
from mesh.resilience import policy_from_env
from mesh.server import HostedService, LifecycleHook, serve
from mesh.telemetry import start_telemetry
from mesh.verifier import JwtVerifier
from services.common.auth import Authenticator
from services.common.database import Database
from services.common.errors import StatusInterceptor
from services.common.migrations import migrate
from services.common.settings import ServiceSettings, service_settings_from_env

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    """What a service's builder gets: its settings, database, authenticator and channels."""

    settings: ServiceSettings
    database: Database
    auth: Authenticator
    discovery: Discovery
    resources: contextlib.AsyncExitStack
    observers: Sequence[CallObserver] = ()  # client telemetry (mesh.observer) for every channel
    # The process's metrics registry (served on /metrics), for a service's own families.
    registry: CollectorRegistry | None = None
    # The process's mesh identity its channels present (None with MESH_INSECURE=1).
    identity: WorkloadIdentity | None = None
    _channels: dict[str, MeshChannel] = field(default_factory=dict)

    def channel(self, service: str) -> MeshChannel:
        """The process's one mesh channel to ``service`` (closed after the server drains)."""
        channel = self._channels.get(service)
        if channel is None:
            channel = self._channels[service] = mesh_channel(
                service,
                self.discovery,
                observers=self.observers,
                policy=self.settings.policy,
                identity=self.identity,
            )
            self.resources.push_async_callback(channel.close)
        return channel


Builder = Callable[[ServiceContext], Awaitable[Sequence[HostedService]]]


def registration_hooks(settings: ServiceSettings) -> list[LifecycleHook]:
    """Consul registration when a registry is configured; none otherwise."""
    if not settings.consul_address:
        return []
    return [
        ConsulRegistrar(
            settings.consul_address,
            check_interval=settings.check_interval_seconds,
            check_timeout=settings.check_timeout_seconds,
            token=settings.security.consul_token,
        )
    ]


async def run(settings: ServiceSettings, migrations: Path, build: Builder) -> None:
    """Open the database and discovery, migrate, serve until signalled, then close all."""
    async with contextlib.AsyncExitStack() as resources:
        telemetry = start_telemetry(
            settings.tracing, metrics_host=settings.server.host, metrics_port=settings.metrics_port
        )
        resources.callback(telemetry.close)  # last out: flushes spans after the server drained
        database = Database(settings.name, settings.database_url)
        resources.push_async_callback(database.close)
        await migrate(database, migrations)
        workload = await connect_workload(settings.name, settings.consul_address, settings.security)
        if workload is not None:
            resources.push_async_callback(workload.close)
        discovery = make_discovery(
            settings.discovery_address,
            settings.upstreams.static,
            token=settings.security.consul_token,
            stale=settings.consul_stale,
        )
        resources.push_async_callback(discovery.close)
        authenticator = Authenticator(
            JwtVerifier(settings.jwt),
            insecure=settings.security.insecure,
            trusted_callers=settings.trusted_callers,
        )
        context = ServiceContext(
            settings,
            database,
            authenticator,
            discovery,
            resources,
            telemetry.client_observers,
            telemetry.registry,
            workload.identity if workload is not None else None,
        )
        services = await build(context)
        await serve(
            settings.server,
            services,
            telemetry=telemetry.server,
            status=StatusInterceptor(),
            hooks=registration_hooks(settings),
            meta=telemetry.meta,
            security=workload,
        )


def main(name: str, migrations: Path, build: Builder, policy: Mapping[str, Any] | None = None) -> None:
    """Entry point of ``python -m services.<name>``; ``policy`` is the service's built-in call
    policy (a tree in the policy file's format), below every key of MESH_POLICY_FILE/_*."""
    settings = service_settings_from_env(name, os.environ)
    if policy is not None:
        settings = dataclasses.replace(settings, policy=policy_from_env(os.environ, builtin=policy))
    configure_logging(name, settings.log_level)
    # uvloop's event loop, as the gateway's: a grpc.aio server call costs 29 % fewer
    # instructions on it (504k -> 360k bare; 978k -> 807k with the whole traced stack;
    # bench/server_instructions.py, docs/benchmarks.md).
    uvloop.run(run(settings, migrations, build))
