"""Your own service on the mesh in one call: :func:`main` (or :func:`run_app` from async code).

A service process does the same things in the same order whatever it serves, and getting
that order wrong is how a mesh leaks: telemetry first (so start-up is traced and /metrics
answers), then under mTLS its certificate for its own name from the local Consul agent
(:func:`mesh.connect.setup.connect_workload`), then discovery, then the service's own
builder, then :func:`mesh.server.serve` with Consul registration; and on SIGTERM the reverse:
withdraw from Consul, drain, close the channels the service opened, flush spans last.

What a service writes is only its builder: given an :class:`AppContext`, return the
:class:`~mesh.server.HostedService` list to serve. ``context.channel("inventory")`` is the
process's one mesh channel to another service (discovery, balancing, retries, breaker,
deadlines, tracing and mTLS all on), which generated stubs accept::

    async def build(context: AppContext) -> Sequence[HostedService]:
        inventory = InventoryServiceStub(context.channel("inventory"))
        servicer = QuoteServicer(inventory)
        return [HostedService(SERVICE, lambda server: add_QuoteServiceServicer_to_server(servicer, server))]

    if __name__ == "__main__":
        main("quotes", build, port=50060)

Settings come from the environment once (:func:`app_settings_from_env`, the same variables
every shop service reads: ``MESH_PORT``, ``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_TOKEN_FILE``,
``MESH_POLICY_FILE``, ``OTEL_*``...), into one frozen :class:`AppSettings` passed down.
The shop's services build on this too (services/common/app.py adds their database and users'
authentication).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import uvloop
from prometheus_client import CollectorRegistry

from mesh.channel import MeshChannel, mesh_channel
from mesh.config import (
    ServerSettings,
    UpstreamSettings,
    env_float,
    env_int,
    env_str,
    server_settings_from_env,
    upstream_settings_from_env,
)
from mesh.connect.settings import SecuritySettings, security_settings_from_env
from mesh.connect.setup import connect_workload
from mesh.connect.workload import WorkloadIdentity
from mesh.errors import ConfigError
from mesh.logs.setup import configure_logging
from mesh.observer import CallObserver
from mesh.registry import ConsulRegistrar, Discovery, consul_stale_from_env, make_discovery
from mesh.resilience import PolicySettings, policy_from_env
from mesh.server import HostedService, LifecycleHook, serve
from mesh.server.runtime import EXIT_PORT_UNAVAILABLE, PortUnavailable
from mesh.telemetry import start_telemetry
from mesh.tracing.setup import TracingSettings, tracing_settings_from_env

log = logging.getLogger(__name__)

UPSTREAM_VARIABLE_PREFIX = "MESH_UPSTREAM_"


@dataclass(frozen=True, kw_only=True)
class AppSettings:
    """Everything a mesh service process needs to start, whatever it serves."""

    server: ServerSettings
    upstreams: UpstreamSettings = field(default_factory=UpstreamSettings)
    log_level: str = "INFO"
    # Consul's HTTP address; empty means no registry (static upstream targets, no registration).
    consul_address: str = ""
    # MESH_DISCOVERY=static: find the others at MESH_UPSTREAM_<NAME> even with Consul configured,
    # which then still registers this instance and issues its certificate. For a platform whose
    # own discovery (DNS, a fixed address) stands in front of the mesh, and for tests that put a
    # proxy between two services.
    static_discovery: bool = False
    # MESH_CONSUL_STALE=1: discovery reads Consul with stale consistency (any server answers,
    # a cluster without a leader still serves the last known endpoints; see ConsulDiscovery).
    consul_stale: bool = False
    check_interval_seconds: float = 1.0
    # How long Consul's check waits for an answer: a frozen instance is critical after at most
    # one interval plus this.
    check_timeout_seconds: float = 1.0
    # /metrics port (0: any free port, published in Consul meta as metrics_port); OTEL_* tracing.
    metrics_port: int = 0
    tracing: TracingSettings = field(default_factory=TracingSettings)
    # Timeouts, retries, breakers and budgets of outgoing calls (MESH_POLICY_FILE + overrides).
    policy: PolicySettings = field(default_factory=PolicySettings)
    # mTLS from Consul Connect (default) or the loud plaintext switch (MESH_INSECURE=1).
    security: SecuritySettings = field(default_factory=SecuritySettings)

    @property
    def name(self) -> str:
        return self.server.service_name

    @property
    def discovery_address(self) -> str:
        """The Consul address to discover the others through; empty for the static targets."""
        return "" if self.static_discovery else self.consul_address


def app_settings_from_env(
    name: str,
    environ: Mapping[str, str],
    *,
    port: int,
    upstreams: Mapping[str, str] | None = None,
    policy: Mapping[str, Any] | None = None,
) -> AppSettings:
    """Read service ``name``'s settings: ``port`` unless ``MESH_PORT`` says otherwise.

    ``upstreams`` are static fallback targets by service name (used without Consul); any
    ``MESH_UPSTREAM_<NAME>`` in the environment adds or overrides one. ``policy`` is the
    service's built-in call policy (a tree in the policy file's format), below every key of
    ``MESH_POLICY_FILE`` and ``MESH_POLICY__*``.
    """
    static = dict(upstreams or {})
    for variable in environ:
        if variable.startswith(UPSTREAM_VARIABLE_PREFIX) and variable != UPSTREAM_VARIABLE_PREFIX:
            static.setdefault(variable.removeprefix(UPSTREAM_VARIABLE_PREFIX).lower(), "")
    return AppSettings(
        server=server_settings_from_env(environ, name, port),
        upstreams=upstream_settings_from_env(environ, static),
        log_level=env_str(environ, "MESH_LOG_LEVEL", "INFO"),
        consul_address=env_str(environ, "CONSUL_HTTP_ADDR", ""),
        static_discovery=static_discovery_from_env(environ),
        consul_stale=consul_stale_from_env(environ),
        check_interval_seconds=env_float(environ, "MESH_CHECK_INTERVAL_SECONDS", 1.0),
        check_timeout_seconds=env_float(environ, "MESH_CHECK_TIMEOUT_SECONDS", 1.0),
        metrics_port=env_int(environ, "MESH_METRICS_PORT", 0),
        tracing=tracing_settings_from_env(environ, name),
        policy=policy_from_env(environ, builtin=policy),
        security=security_settings_from_env(environ),
    )


def static_discovery_from_env(environ: Mapping[str, str]) -> bool:
    """``MESH_DISCOVERY``: ``consul`` (the default: Consul when CONSUL_HTTP_ADDR is set) or ``static``."""
    mode = env_str(environ, "MESH_DISCOVERY", "consul").strip().lower()
    if mode not in ("consul", "static"):
        raise ConfigError(f"MESH_DISCOVERY must be 'consul' or 'static', got {mode!r}")
    return mode == "static"


@dataclass
class AppContext:
    """What a service's builder gets: its settings, discovery, metrics registry and channels."""

    settings: AppSettings
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


AppBuilder = Callable[[AppContext], Awaitable[Sequence[HostedService]]]


def registration_hooks(settings: AppSettings) -> list[LifecycleHook]:
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


async def run_app(
    settings: AppSettings, build: AppBuilder, *, status: grpc.aio.ServerInterceptor | None = None
) -> None:
    """Open telemetry, identity and discovery, build, serve until signalled, then close all.

    ``status`` is an optional innermost server interceptor (the shop maps its domain errors
    to gRPC statuses there).
    """
    async with contextlib.AsyncExitStack() as resources:
        telemetry = start_telemetry(
            settings.tracing, metrics_host=settings.server.host, metrics_port=settings.metrics_port
        )
        resources.callback(telemetry.close)  # last out: flushes spans after the server drained
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
        context = AppContext(
            settings,
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
            status=status,
            hooks=registration_hooks(settings),
            meta=telemetry.meta,
            security=workload,
        )


def main(name: str, build: AppBuilder, *, port: int, policy: Mapping[str, Any] | None = None) -> None:
    """Entry point of a service's ``__main__``: read settings, log JSON, serve on uvloop.

    ``port`` is the default service port (``MESH_PORT`` overrides it); ``policy`` the
    service's built-in call policy (see :func:`app_settings_from_env`). A bad setting stops
    the process here with a ConfigError naming the variable, before anything starts.
    """
    settings = app_settings_from_env(name, os.environ, port=port, policy=policy)
    configure_logging(name, settings.log_level)
    run_service(run_app(settings, build))


def run_service(serving: Coroutine[Any, Any, None]) -> None:
    """Run a service's ``serving`` coroutine to its end on uvloop, as every entry point does.

    uvloop's event loop, as the gateway's: a grpc.aio server call costs 29 % fewer
    instructions on it (bench/server_instructions.py, docs/benchmarks.md). A port that cannot
    be bound ends the process with :data:`~mesh.server.runtime.EXIT_PORT_UNAVAILABLE` and
    one log line naming the address, so whoever chose the port can tell and choose another.
    """
    try:
        uvloop.run(serving)
    except PortUnavailable as error:
        log.error(str(error), extra={"event": "port_unavailable"})
        raise SystemExit(EXIT_PORT_UNAVAILABLE) from None
