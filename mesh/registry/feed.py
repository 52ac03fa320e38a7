"""A versioned endpoint set with many readers: the shared half of every Watcher.

One feed exists per service name per process; each :class:`FeedWatcher` remembers the
version it returned last, so many channels can watch one name while the registry is
queried once. Waking is a broadcast: each publish sets the current event and replaces it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mesh.registry.base import Endpoints


class EndpointFeed:
    """The latest endpoint set of one service and a way to wait for the next one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.endpoints: Endpoints = ()
        self.version = 0  # 0: the registry has not answered yet
        self._changed = asyncio.Event()

    @property
    def resolved(self) -> bool:
        """Whether the registry has answered at least once."""
        return self.version > 0

    def publish(self, endpoints: Endpoints) -> bool:
        """Make ``endpoints`` current; returns whether anything changed (and readers woke)."""
        ordered = tuple(sorted(endpoints, key=lambda e: (e.target, e.id)))
        if self.resolved and ordered == self.endpoints:
            return False
        self.endpoints = ordered
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    async def wait_newer(self, version: int) -> None:
        """Return once the feed's version differs from ``version``."""
        while self.version == version:
            await self._changed.wait()


class FeedWatcher:
    """A :class:`mesh.registry.base.Watcher` reading an :class:`EndpointFeed`."""

    def __init__(self, feed: EndpointFeed, on_close: Callable[[FeedWatcher], None] | None = None) -> None:
        self._feed = feed
        self._seen = 0
        self._on_close = on_close
        self._closed = False

    async def next(self) -> Endpoints:
        """The feed's set once it is newer than the one returned last."""
        await self._feed.wait_newer(self._seen)
        self._seen = self._feed.version
        return self._feed.endpoints

    def close(self) -> None:
        """Detach from the feed (idempotent)."""
        if not self._closed:
            self._closed = True
            if self._on_close is not None:
                self._on_close(self)
