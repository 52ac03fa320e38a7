"""The registry seam: what an instance publishes and what a client watches.

Everything above this module (balancers, the mesh channel, ``mesh status``) sees only
:class:`ServiceInstance` values and the :class:`Discovery`/:class:`Watcher` protocols, so
Consul can be swapped for a static list in tests without touching the call path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol


@dataclass(frozen=True)
class ServiceInstance:
    """One reachable instance of a service, shared by the registry and the balancer.

    ``tags`` and ``meta`` are frozen on construction (tuple and read-only mapping) so an
    instance can be hashed, put in sets and handed across tasks without defensive copies.
    ``meta`` takes no part in the hash (mappings are not hashable) but does in equality.
    """

    id: str
    name: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict, hash=False)
    # ``host:port`` as grpc dials it (IPv6 literals bracketed); also the endpoint's key.
    # Computed once: the balancer looks it up on every call.
    target: str = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("ServiceInstance.name must not be empty")
        if not self.address:
            raise ValueError(f"ServiceInstance {self.id!r} has no address")
        if not 0 < self.port <= 65535:
            raise ValueError(f"ServiceInstance {self.id!r} has invalid port {self.port}")
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))
        bare_ipv6 = ":" in self.address and not self.address.startswith("[")
        host = f"[{self.address}]" if bare_ipv6 else self.address
        object.__setattr__(self, "target", f"{host}:{self.port}")

    @classmethod
    def from_target(cls, name: str, target: str, tags: tuple[str, ...] = ()) -> ServiceInstance:
        """An instance from a ``host:port`` string, for static configuration and tests."""
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"target must be host:port, got {target!r}")
        host = host.strip("[]")
        return cls(id=f"{name}-{target}", name=name, address=host, port=int(port), tags=tags)


Endpoints = tuple[ServiceInstance, ...]


class Watcher(Protocol):
    """A view of one service's healthy endpoint set.

    ``next()`` returns the current set on its first call (once the registry has answered
    at least once) and afterwards blocks until the set changes. A registry error never
    turns a non-empty set into an empty one: the last known set stays in force.
    """

    async def next(self) -> Endpoints:
        """The endpoint set, as soon as it differs from the one this watcher returned last."""

    def close(self) -> None:
        """Stop watching; a pending ``next()`` is not woken (cancel its task instead)."""


class Discovery(Protocol):
    """Hands out watchers; implementations share one upstream watch per service name."""

    def watch(self, name: str) -> Watcher:
        """A new watcher on ``name``'s healthy endpoints."""

    async def close(self) -> None:
        """Stop every upstream watch and release connections."""
