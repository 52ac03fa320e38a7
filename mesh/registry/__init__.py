"""Service registry: publishing instances and watching healthy endpoint sets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mesh.config import env_str
from mesh.errors import ConfigError
from mesh.registry.base import Discovery, Endpoints, ServiceInstance, Watcher
from mesh.registry.consul import ConsulDiscovery, ConsulRegistrar
from mesh.registry.static import StaticDiscovery

__all__ = [
    "ConsulDiscovery",
    "ConsulRegistrar",
    "Discovery",
    "Endpoints",
    "ServiceInstance",
    "StaticDiscovery",
    "Watcher",
    "consul_stale_from_env",
    "make_discovery",
]

STALE_VARIABLE = "MESH_CONSUL_STALE"


def make_discovery(
    consul_address: str,
    static: Mapping[str, Iterable[str]] | None = None,
    *,
    token: str = "",
    stale: bool = False,
) -> Discovery:
    """Consul when an address is configured, else the static ``host:port`` targets.

    Build one per process and hand it to every channel: a discovery shares one upstream watch
    per service name among all the channels that ask for it. ``stale`` turns on Consul's
    stale reads (see :class:`ConsulDiscovery`); static discovery ignores it.
    """
    if consul_address:
        return ConsulDiscovery(consul_address, token=token, stale=stale)
    return StaticDiscovery(static or {})


def consul_stale_from_env(environ: Mapping[str, str]) -> bool:
    """``MESH_CONSUL_STALE``: ``1`` for stale Consul reads in discovery, ``0`` (the default) not.

    Read by the services and the gateway alike, so both accept exactly the same values.
    """
    raw = env_str(environ, STALE_VARIABLE, "0")
    if raw not in ("0", "1"):
        raise ConfigError(f"{STALE_VARIABLE} must be 1 or 0, got {raw!r}")
    return raw == "1"
