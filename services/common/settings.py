"""One typed settings object per service process, read from the environment once.

``<SERVICE>_DATABASE_URL`` picks the database: a ``postgresql://`` DSN, or a SQLite file path
(default ``$MESH_DATA_DIR/<service>.sqlite3``). Each service has its own variable, so no two
services can end up sharing one database by accident of a shared setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mesh.config import (
    ServerSettings,
    UpstreamSettings,
    env_float,
    env_int,
    env_str,
    server_settings_from_env,
    upstream_settings_from_env,
)
from mesh.identity import JwtSettings, jwt_settings_from_env
from mesh.resilience import PolicySettings, policy_from_env
from mesh.telemetry.tracing import TracingSettings, tracing_settings_from_env

DEFAULT_PORTS = {
    "user": 50051,
    "order": 50052,
    "payment": 50053,
    "inventory": 50054,
    "shipping": 50055,
}


DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True)
class MessagingSettings:
    """Where events go: ``SHOP_AMQP_URL`` and ``SHOP_EVENTS_NAMESPACE``.

    ``SHOP_AMQP_URL=none`` turns the bus off for this process: the order service still writes
    every event to its outbox (they wait there, nothing is lost) but no relay or consumer runs.
    Tests that are not about events use it so they leave nothing on the machine's broker.
    """

    amqp_url: str = field(default=DEFAULT_AMQP_URL, repr=False)
    namespace: str = "shop"

    @property
    def enabled(self) -> bool:
        return self.amqp_url.lower() not in ("none", "off")

    @property
    def exchange(self) -> str:
        """The durable topic exchange every order event is published to."""
        return f"{self.namespace}.events"

    def queue(self, consumer: str) -> str:
        """The durable queue of one consumer (``billing``, ``notifications``)."""
        return f"{self.namespace}.{consumer}"


def messaging_settings_from_env(environ: Mapping[str, str]) -> MessagingSettings:
    return MessagingSettings(
        amqp_url=env_str(environ, "SHOP_AMQP_URL", DEFAULT_AMQP_URL),
        namespace=env_str(environ, "SHOP_EVENTS_NAMESPACE", "shop"),
    )


@dataclass(frozen=True)
class ServiceSettings:
    """Everything one shop service process needs to start."""

    server: ServerSettings
    database_url: str = field(repr=False)
    jwt: JwtSettings
    upstreams: UpstreamSettings
    log_level: str = "INFO"
    extra: Mapping[str, str] = field(default_factory=dict)
    # Consul's HTTP address; empty means no registry (static upstream targets, no registration).
    consul_address: str = ""
    check_interval_seconds: float = 1.0
    # /metrics port (0: any free port, published in Consul meta as metrics_port); OTEL_* tracing.
    metrics_port: int = 0
    tracing: TracingSettings = field(default_factory=TracingSettings)
    # Timeouts, retries, breakers and budgets of outgoing calls (MESH_POLICY_FILE + overrides).
    policy: PolicySettings = field(default_factory=PolicySettings)
    # The event bus: RabbitMQ's URL (credentials never logged) and the namespace its exchange
    # and queues are named from ("<namespace>.events", "<namespace>.billing"...), so tests can
    # share one broker without hearing each other.
    messaging: MessagingSettings = field(default_factory=MessagingSettings)

    @property
    def name(self) -> str:
        return self.server.service_name


def service_settings_from_env(name: str, environ: Mapping[str, str]) -> ServiceSettings:
    """Build the settings of service ``name`` from the environment."""
    data_dir = Path(env_str(environ, "MESH_DATA_DIR", "data"))
    database_url = env_str(environ, f"{name.upper()}_DATABASE_URL", str(data_dir / f"{name}.sqlite3"))
    upstream_defaults = {svc: f"127.0.0.1:{port}" for svc, port in DEFAULT_PORTS.items() if svc != name}
    prefix = f"{name.upper()}_"
    return ServiceSettings(
        server=server_settings_from_env(environ, name, DEFAULT_PORTS[name]),
        database_url=database_url,
        jwt=jwt_settings_from_env(environ),
        upstreams=upstream_settings_from_env(environ, upstream_defaults),
        log_level=env_str(environ, "MESH_LOG_LEVEL", "INFO"),
        extra={k.removeprefix(prefix): v for k, v in environ.items() if k.startswith(prefix)},
        consul_address=env_str(environ, "CONSUL_HTTP_ADDR", ""),
        check_interval_seconds=env_float(environ, "MESH_CHECK_INTERVAL_SECONDS", 1.0),
        metrics_port=env_int(environ, "MESH_METRICS_PORT", 0),
        tracing=tracing_settings_from_env(environ, name),
        policy=policy_from_env(environ),
        messaging=messaging_settings_from_env(environ),
    )
