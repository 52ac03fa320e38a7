"""Service registry: publishing instances and watching healthy endpoint sets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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
    "make_discovery",
]


def make_discovery(
    consul_address: str, static: Mapping[str, Iterable[str]] | None = None, *, token: str = ""
) -> Discovery:
    """Consul when an address is configured, else the static ``host:port`` targets.

    Build one per process and hand it to every channel: a discovery shares one upstream watch
    per service name among all the channels that ask for it.
    """
    if consul_address:
        return ConsulDiscovery(consul_address, token=token)
    return StaticDiscovery(static or {})
