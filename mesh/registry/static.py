"""Discovery from a fixed list: tests, local runs and configs without a registry.

The set can still change at runtime through :meth:`StaticDiscovery.set`, which is how unit
tests exercise endpoint churn without Consul.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mesh.registry.base import Endpoints, ServiceInstance
from mesh.registry.feed import EndpointFeed, FeedWatcher


def _instances(name: str, items: Iterable[ServiceInstance | str]) -> Endpoints:
    return tuple(
        item if isinstance(item, ServiceInstance) else ServiceInstance.from_target(name, item)
        for item in items
    )


class StaticDiscovery:
    """A :class:`mesh.registry.base.Discovery` over a name -> endpoints mapping.

    An unknown name resolves to the empty set at once, so calls fail fast with
    ``no healthy endpoint`` instead of waiting for a registry that will never answer.
    """

    def __init__(self, services: Mapping[str, Iterable[ServiceInstance | str]] | None = None) -> None:
        self._initial = {name: _instances(name, items) for name, items in (services or {}).items()}
        self._feeds: dict[str, EndpointFeed] = {}

    def _feed(self, name: str) -> EndpointFeed:
        feed = self._feeds.get(name)
        if feed is None:
            feed = self._feeds[name] = EndpointFeed(name)
            feed.publish(self._initial.get(name, ()))
        return feed

    def watch(self, name: str) -> FeedWatcher:
        """A watcher that sees the configured set at once and every later :meth:`set`."""
        return FeedWatcher(self._feed(name))

    def set(self, name: str, endpoints: Iterable[ServiceInstance | str]) -> None:
        """Replace ``name``'s endpoint set (an empty set is applied: this is not an error)."""
        instances = _instances(name, endpoints)
        self._initial[name] = instances
        self._feed(name).publish(instances)

    async def close(self) -> None:
        """Nothing to release; present to satisfy the Discovery protocol."""
