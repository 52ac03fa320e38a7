"""The settings every service process shares, typed and read from the environment once.

``<SERVICE>_DATABASE_URL`` picks the database: a ``postgresql://`` DSN, or a SQLite file path
(default ``$MESH_DATA_DIR/<service>.sqlite3``). Each service has its own variable, so no two
services can end up sharing one database by accident of a shared setting.

What only one service reads (payment's decline rule, a consumer's prefetch...) is not here:
each service has its own frozen settings class in ``services/<service>/settings.py``, built
and validated in its ``__main__`` before anything starts, with errors that name the variable.
There is no untyped map of "the rest" passed around for code deep inside to pick from.

Who may call: ``security`` (mTLS, or the loud ``MESH_INSECURE=1`` plaintext switch; see
:mod:`mesh.connect.settings`) and ``trusted_callers`` (``MESH_TRUSTED_CALLERS``, comma
separated, default ``order``): the services whose calls, carrying no user's token, act as the
shop itself (a service principal) and so may move payments, stock and shipments for users.
The caller's service is its mesh identity, never a token (services/common/auth.py).

How the others are found: ``CONSUL_HTTP_ADDR`` (empty: the static ``MESH_UPSTREAM_<NAME>``
targets), ``MESH_DISCOVERY`` (``consul`` or ``static``) and ``MESH_CONSUL_STALE`` (``1``: read
Consul with stale consistency, so any server answers and a cluster without a leader still
serves the last known endpoints; ``0``, the default: the leader answers every read).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mesh.app import AppSettings, app_settings_from_env
from mesh.config import env_list, env_str
from mesh.errors import ConfigError
from mesh.identity import JwtSettings, jwt_settings_from_env

DEFAULT_PORTS = {
    "user": 50051,
    "order": 50052,
    "payment": 50053,
    "inventory": 50054,
    "shipping": 50055,
}


DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"

# The services allowed to move payments, stock and shipments for users (the saga's caller).
DEFAULT_TRUSTED_CALLERS = ("order",)
_SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


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


@dataclass(frozen=True, kw_only=True)
class ServiceSettings(AppSettings):
    """Everything one shop service process needs to start: a mesh service's settings
    (:class:`mesh.app.AppSettings`) and what the shop adds, its database, users' tokens,
    events and trusted callers."""

    database_url: str = field(repr=False)
    jwt: JwtSettings
    # The event bus: RabbitMQ's URL (credentials never logged) and the namespace its exchange
    # and queues are named from ("<namespace>.events", "<namespace>.billing"...), so tests can
    # share one broker without hearing each other.
    messaging: MessagingSettings = field(default_factory=MessagingSettings)
    # Callers whose identity alone (no user token) makes them a service principal.
    trusted_callers: tuple[str, ...] = DEFAULT_TRUSTED_CALLERS


def service_settings_from_env(
    name: str, environ: Mapping[str, str], policy: Mapping[str, Any] | None = None
) -> ServiceSettings:
    """Build the settings of service ``name`` from the environment; ``policy`` is the service's
    built-in call policy, below every key of MESH_POLICY_FILE and MESH_POLICY__*."""
    data_dir = Path(env_str(environ, "MESH_DATA_DIR", "data"))
    database_url = env_str(environ, f"{name.upper()}_DATABASE_URL", str(data_dir / f"{name}.sqlite3"))
    upstream_defaults = {svc: f"127.0.0.1:{port}" for svc, port in DEFAULT_PORTS.items() if svc != name}
    app = app_settings_from_env(
        name, environ, port=DEFAULT_PORTS[name], upstreams=upstream_defaults, policy=policy
    )
    return ServiceSettings(
        **{f.name: getattr(app, f.name) for f in fields(app)},
        database_url=database_url,
        jwt=jwt_settings_from_env(environ),
        messaging=messaging_settings_from_env(environ),
        trusted_callers=trusted_callers_from_env(environ),
    )


def trusted_callers_from_env(environ: Mapping[str, str]) -> tuple[str, ...]:
    """``MESH_TRUSTED_CALLERS``: service names, comma separated (``none`` for no service).

    The gateway is refused here: it forwards anonymous clients' calls, so trusting its identity
    would make every anonymous REST request a service principal.
    """
    names = env_list(environ, "MESH_TRUSTED_CALLERS")
    if not names:
        return DEFAULT_TRUSTED_CALLERS
    if names == ("none",):
        return ()
    for name in names:
        if not _SERVICE_NAME.fullmatch(name):
            raise ConfigError(f"MESH_TRUSTED_CALLERS: {name!r} is not a service name")
        if name == "gateway":
            raise ConfigError(
                "MESH_TRUSTED_CALLERS must not name the gateway: it forwards anonymous clients' calls"
            )
    return tuple(dict.fromkeys(names))


def service_variables(name: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The ``<NAME>_*`` variables with that prefix removed: input for a service's own parsers.

    Only for parsing in a service's settings module (or ``__main__``), never kept: what the
    parsers return is the typed settings object the service passes on.
    """
    prefix = f"{name.upper()}_"
    return {k.removeprefix(prefix): v for k, v in environ.items() if k.startswith(prefix)}


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def env_bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    """A yes/no variable (1/0, true/false, yes/no, on/off); ConfigError naming it otherwise."""
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ConfigError(f"{name} must be one of {'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}, got {raw!r}")
