"""Typed, frozen settings for a mesh process, validated when built.

The environment is read exactly once, in a process's ``__main__``, through :func:`from_env`;
everything below receives the resulting object. Invalid values raise :class:`ConfigError`
naming the variable, so a typo fails the start instead of surfacing as odd behaviour later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.errors import ConfigError

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    """How one server process listens, advertises itself and shuts down."""

    service_name: str
    port: int
    host: str = "127.0.0.1"
    advertise_host: str = ""
    grace_seconds: float = 10.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    version: str = "0.1.0"
    tags: tuple[str, ...] = ()
    # Under mTLS, the plaintext health-only listener's port (0: any free port); see MeshServer.
    health_port: int = 0

    def __post_init__(self) -> None:
        if not self.service_name:
            raise ConfigError("service_name must not be empty")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"MESH_PORT must be within 0..65535, got {self.port}")
        if not 0 <= self.health_port <= 65535:
            raise ConfigError(f"MESH_HEALTH_PORT must be within 0..65535, got {self.health_port}")
        if self.grace_seconds < 0:
            raise ConfigError(f"MESH_GRACE_SECONDS must be >= 0, got {self.grace_seconds}")
        if self.max_message_bytes <= 0:
            raise ConfigError(f"MESH_MAX_MESSAGE_BYTES must be > 0, got {self.max_message_bytes}")

    @property
    def address(self) -> str:
        """The host other processes should dial (the bind host unless told otherwise)."""
        return self.advertise_host or self.host


@dataclass(frozen=True)
class UpstreamSettings:
    """Where this process reaches the services it calls.

    ``static`` maps a service name to ``host:port`` targets; it is the fallback when no
    registry is configured and the default for tests that start processes by hand.
    """

    static: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_timeout_seconds: float = 5.0

    def targets(self, service: str) -> tuple[str, ...]:
        """The configured targets of ``service``; raises ConfigError when there are none."""
        try:
            return self.static[service]
        except KeyError:
            raise ConfigError(f"no address configured for upstream '{service}'") from None


def env_str(environ: Mapping[str, str], name: str, default: str) -> str:
    """A string variable, stripped; the default when unset or blank."""
    value = environ.get(name, "").strip()
    return value or default


def env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    """An integer variable; ConfigError naming it when it is not an integer."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def env_float(environ: Mapping[str, str], name: str, default: float) -> float:
    """A float variable; ConfigError naming it when it is not a number."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def env_list(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated variable as a tuple of non-empty, stripped items."""
    return tuple(item.strip() for item in environ.get(name, "").split(",") if item.strip())


def server_settings_from_env(
    environ: Mapping[str, str], service_name: str, default_port: int
) -> ServerSettings:
    """Build :class:`ServerSettings` for ``service_name`` from ``MESH_*`` variables."""
    return ServerSettings(
        service_name=service_name,
        port=env_int(environ, "MESH_PORT", default_port),
        host=env_str(environ, "MESH_HOST", "127.0.0.1"),
        advertise_host=env_str(environ, "MESH_ADVERTISE_HOST", ""),
        grace_seconds=env_float(environ, "MESH_GRACE_SECONDS", 10.0),
        max_message_bytes=env_int(environ, "MESH_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES),
        version=env_str(environ, "MESH_VERSION", "0.1.0"),
        tags=env_list(environ, "MESH_TAGS"),
        health_port=env_int(environ, "MESH_HEALTH_PORT", 0),
    )


def upstream_settings_from_env(environ: Mapping[str, str], defaults: Mapping[str, str]) -> UpstreamSettings:
    """Static upstream targets: ``MESH_UPSTREAM_<NAME>=host:port[,host:port]`` over defaults."""
    static: dict[str, tuple[str, ...]] = {}
    for name, default in defaults.items():
        variable = f"MESH_UPSTREAM_{name.upper()}"
        targets = env_list(environ, variable) or (default,)
        for target in targets:
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"{variable} must be host:port[,host:port], got {target!r}")
        static[name] = targets
    return UpstreamSettings(
        static=static,
        default_timeout_seconds=env_float(environ, "MESH_DEFAULT_TIMEOUT_SECONDS", 5.0),
    )
