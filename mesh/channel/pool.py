"""The endpoints behind one MeshChannel: a grpc.aio channel each, kept in step with a Watcher.

grpcio gives Python no resolver or balancing API, so the mesh holds one real channel per
endpoint and chooses among them per call. Channels open when an endpoint appears (and start
connecting at once, so the first call does not pay for the handshake) and close when it
leaves, with a grace period so calls already running on it finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any

import grpc
import grpc.aio

from mesh.balancer.base import Balancer, Done
from mesh.balancer.subset import subset
from mesh.errors import NoHealthyEndpoint
from mesh.registry.base import Endpoints, ServiceInstance, Watcher

log = logging.getLogger(__name__)

ChannelFactory = Callable[[ServiceInstance], Any]


class Endpoint:
    """One endpoint and its live channel."""

    __slots__ = ("channel", "instance")

    def __init__(self, instance: ServiceInstance, channel: Any) -> None:
        self.instance = instance
        self.channel = channel


class EndpointPool:
    """Follows a watcher, owns the per-endpoint channels and picks through the balancer."""

    def __init__(
        self,
        name: str,
        watcher_factory: Callable[[], Watcher],
        balancer: Balancer,
        channel_factory: ChannelFactory,
        *,
        tags: tuple[str, ...] = (),
        drain_seconds: float = 30.0,
        on_leave: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.name = name
        self.balancer = balancer
        self.tags = tags
        self.drain_seconds = drain_seconds
        self.version = 0  # bumped on every applied change; 0 = not resolved yet
        self._watcher_factory = watcher_factory
        self._channel_factory = channel_factory
        self._endpoints: Endpoints = ()
        self._by_target: dict[str, Endpoint] = {}
        self._changed: asyncio.Event | None = None
        self._watcher: Watcher | None = None
        self._follow: asyncio.Task[None] | None = None
        self._draining: set[asyncio.Task[None]] = set()
        self._closed = False
        self.running = False  # following discovery and open for calls (read per call: no Python call)
        # Told the targets that remain whenever some leave (the channel drops their breakers).
        self._on_leave = on_leave

    @property
    def endpoints(self) -> Endpoints:
        """The endpoints calls are spread over right now (after the tag subset)."""
        return self._endpoints

    @property
    def resolved(self) -> bool:
        """Whether the registry has answered at least once."""
        return self.version > 0

    def ensure_started(self) -> None:
        """Start following the watcher (needs a running loop; cheap when already started)."""
        if self._follow is None or self._closed:
            if self._closed:
                raise grpc.aio.UsageError(f"mesh channel for {self.name!r} is closed")
            self._watcher = self._watcher_factory()
            self._follow = asyncio.get_running_loop().create_task(self._run(), name=f"mesh-pool-{self.name}")
            self.running = True

    async def _run(self) -> None:
        assert self._watcher is not None
        while True:
            try:
                instances = await self._watcher.next()
            except Exception:  # a broken watcher must not silently freeze the endpoint set
                log.exception("%s: watcher failed; retrying in 1s", self.name)
                await asyncio.sleep(1.0)
                continue
            self.apply(instances)

    def apply(self, instances: Sequence[ServiceInstance]) -> None:
        """Make ``instances`` (filtered by tags, one per target) the endpoint set."""
        unique: dict[str, ServiceInstance] = {}
        for instance in subset(tuple(instances), self.tags):
            unique.setdefault(instance.target, instance)
        left = [t for t in self._by_target if t not in unique]
        for target in left:
            gone = self._by_target.pop(target)
            log.info("%s: endpoint %s left; draining its channel", self.name, target)
            self._drain(gone.channel, self.drain_seconds)
        for target, instance in unique.items():
            known = self._by_target.get(target)
            if known is None:
                channel = self._channel_factory(instance)
                channel.get_state(try_to_connect=True)
                self._by_target[target] = Endpoint(instance, channel)
            else:
                known.instance = instance
        self._endpoints = tuple(unique.values())
        self.balancer.update(self._endpoints)
        if left and self._on_leave is not None:
            self._on_leave(set(unique))
        self.version += 1
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def renew(self) -> None:
        """Open a new channel to every endpoint and drain the old ones (new credentials)."""
        for target, endpoint in self._by_target.items():
            old = endpoint.channel
            endpoint.channel = self._channel_factory(endpoint.instance)
            endpoint.channel.get_state(try_to_connect=True)
            log.info("%s: renewed the channel to %s; draining the old one", self.name, target)
            self._drain(old, self.drain_seconds)

    def pick(self, exclude: Collection[str] = ()) -> tuple[Endpoint, Done]:
        """An endpoint for one call; raises NoHealthyEndpoint when none (outside ``exclude``) exists."""
        candidates = self._endpoints
        if exclude:
            candidates = tuple(e for e in candidates if e.target not in exclude)
        if not candidates:
            raise NoHealthyEndpoint(self.name)
        instance, done = self.balancer.pick(candidates)
        return self._by_target[instance.target], done

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def failing_targets(self) -> frozenset[str]:
        """Targets whose channel is in TRANSIENT_FAILURE (the connection is known to be down)."""
        failure = grpc.ChannelConnectivity.TRANSIENT_FAILURE
        return frozenset(t for t, e in self._by_target.items() if e.channel.get_state() == failure)

    def channels(self) -> list[Any]:
        """The live per-endpoint channels."""
        return [endpoint.channel for endpoint in self._by_target.values()]

    async def wait_changed(self, version: int, within: float | None) -> bool:
        """Wait up to ``within`` seconds until the version differs from ``version``; False if not."""
        if within is not None and within <= 0:
            return self.version != version
        try:
            async with asyncio.timeout(within):
                while self.version == version:
                    if self._changed is None:
                        self._changed = asyncio.Event()
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def _drain(self, channel: Any, grace: float | None) -> None:
        task = asyncio.get_running_loop().create_task(channel.close(grace))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    async def close(self, grace: float | None = None) -> None:
        """Stop following, then close every channel (with ``grace`` for calls in flight)."""
        self._closed = True
        self.running = False
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        if self._watcher is not None:
            self._watcher.close()
        for endpoint in self._by_target.values():
            self._drain(endpoint.channel, grace)
        self._by_target.clear()
        self._endpoints = ()
        await asyncio.gather(*self._draining, return_exceptions=True)
