"""Consul as the registry: register with a gRPC health check, watch with blocking queries.

The two halves fail differently on purpose. The registrar keeps trying in the background
(a server must not refuse to start because Consul blips) and re-registers whenever the agent
has forgotten the instance (a dev agent restarts empty). The discovery side treats every
registry error as "nothing changed": the last known endpoints stay in force, and an empty
answer right after an outage is held back for a grace period, because a restarted agent
answers "no instances" until the registrars have found it again.

Opt-in stale reads (``stale=True``, ``MESH_CONSUL_STALE=1``): the blocking queries use Consul's
``?stale`` consistency, so any server answers and a cluster without a leader still serves the
last known endpoints; an empty stale answer is believed only once a default read confirms it
(see :class:`ConsulDiscovery`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mesh.errors import RegistryUnavailable
from mesh.registry.base import Endpoints, ServiceInstance
from mesh.registry.consul_api import ConsulApi, HealthEntry
from mesh.registry.feed import EndpointFeed, FeedWatcher

if TYPE_CHECKING:  # mesh.server may import this module to wire registration in
    from mesh.server.lifecycle import BoundServer

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "http://127.0.0.1:8500"


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, never above ``cap``."""
    ceiling = min(cap, base * 2.0 ** max(0, attempt - 1))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def instance_for(server: BoundServer) -> ServiceInstance:
    """The instance a bound server publishes: a stable id, and meta naming what it serves.

    The id is derived from name, address and port, so a process restarted on the same port
    replaces its own stale entry instead of leaving a critical twin behind.
    """
    meta = {"version": server.version, "grpc_services": ",".join(server.hosted_services), **server.meta}
    return ServiceInstance(
        id=f"{server.service_name}-{server.host}-{server.port}",
        name=server.service_name,
        address=server.host,
        port=server.port,
        tags=server.tags,
        meta=meta,
    )


class ConsulRegistrar:
    """A lifecycle hook that publishes this process in Consul on start and withdraws it first on stop."""

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        check_interval: float = 1.0,
        check_timeout: float = 1.0,
        deregister_after: float = 60.0,
        resync_interval: float = 2.0,
        propagation_delay: float = 0.5,
        health_service: str = "",
        token: str = "",
        api: ConsulApi | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if check_interval <= 0 or check_timeout <= 0 or resync_interval <= 0:
            raise ValueError("check_interval, check_timeout and resync_interval must be > 0")
        if deregister_after < 60:
            raise ValueError("Consul's DeregisterCriticalServiceAfter has a 1 minute minimum")
        self.check_interval = check_interval
        self.check_timeout = check_timeout
        self.deregister_after = deregister_after
        self.resync_interval = resync_interval
        self.propagation_delay = propagation_delay
        self.health_service = health_service
        self._api = api or ConsulApi(address, token=token)
        self._rng = rng or random.Random()
        self._instances: dict[str, ServiceInstance] = {}
        self._resync: asyncio.Task[None] | None = None

    def check_for(self, instance: ServiceInstance) -> dict[str, Any]:
        """The gRPC health check (grpc.health.v1) Consul runs against ``instance``.

        Under mTLS the service port wants a client certificate Consul 1.8.7 cannot present:
        the check then dials the plaintext health-only listener the instance publishes in
        its meta (``health_port``).
        """
        health_port = instance.meta.get("health_port") or str(instance.port)
        target = f"{instance.target.rsplit(':', 1)[0]}:{health_port}"
        grpc_target = target + (f"/{self.health_service}" if self.health_service else "")
        return {
            "Name": f"gRPC health of {instance.id}",
            "GRPC": grpc_target,
            "GRPCUseTLS": False,
            "Interval": _duration(self.check_interval),
            "Timeout": _duration(self.check_timeout),
            "DeregisterCriticalServiceAfter": _duration(self.deregister_after),
        }

    async def register(self, instance: ServiceInstance) -> None:
        """Publish ``instance`` and keep it published; raises RegistryUnavailable if that fails now."""
        self._instances[instance.id] = instance
        self._ensure_resync()
        await self._api.register(instance, self.check_for(instance))
        log.info("registered %s at %s in consul", instance.id, instance.target)

    async def deregister(self, instance: ServiceInstance) -> None:
        """Withdraw ``instance``; it is no longer re-registered even if this raises."""
        self._instances.pop(instance.id, None)
        await self._api.deregister(instance.id)
        log.info("deregistered %s from consul", instance.id)

    async def on_started(self, server: BoundServer) -> None:
        """Register the bound server; if Consul is down, log and let the resync loop retry."""
        instance = instance_for(server)
        try:
            await self.register(instance)
        except RegistryUnavailable as exc:
            log.warning("could not register %s yet (%s); retrying in the background", instance.id, exc)

    async def on_stopping(self) -> None:
        """Deregister everything, then give watchers ``propagation_delay`` to notice; never raises.

        Consul wakes blocking queries at once, but a client under load still has calls on
        their way; while this pause lasts the server keeps answering them, so they do not
        meet a server that has already stopped taking calls.
        """
        if self._resync is not None:
            self._resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync
            self._resync = None
        withdrawn = 0
        for instance in list(self._instances.values()):
            try:
                await self.deregister(instance)
                withdrawn += 1
            except RegistryUnavailable as exc:
                log.warning(
                    "could not deregister %s (%s); Consul will drop it after %s",
                    instance.id,
                    exc,
                    _duration(self.deregister_after),
                )
        await self._api.close()
        if withdrawn and self.propagation_delay > 0:
            await asyncio.sleep(self.propagation_delay)

    def _ensure_resync(self) -> None:
        if self._resync is None or self._resync.done():
            self._resync = asyncio.get_running_loop().create_task(self._resync_loop(), name="consul-resync")

    async def _resync_loop(self) -> None:
        """Anti-entropy: re-register whatever the agent has forgotten (restart, wipe, failed start)."""
        failures = 0
        while True:
            delay = self.resync_interval
            if failures:
                delay = backoff_delay(failures, 0.2, self.resync_interval, self._rng)
            await asyncio.sleep(delay)
            try:
                for instance in list(self._instances.values()):
                    if not await self._api.is_registered(instance.id):
                        await self._api.register(instance, self.check_for(instance))
                        log.warning("consul had forgotten %s; registered it again", instance.id)
            except Exception as exc:  # RegistryUnavailable, or an answer we could not parse
                failures += 1
                if failures == 1:
                    log.warning("consul unreachable, will keep retrying registration: %s", exc)
                continue
            if failures:
                log.info("consul reachable again after %d failed resyncs", failures)
            failures = 0


class ConsulDiscovery:
    """Discovery over ``/v1/health/service/<name>?passing``: one blocking-query loop per name.

    ``stale=True`` sends every blocking query with Consul's ``stale`` consistency: the server
    the agent forwards to answers from its own state, so reads spread over the servers, lag
    the leader a little, and keep answering while the cluster has no leader. A server can then
    answer from an incomplete state (a survivor of a lost quorum answered ``[]`` while every
    server had shown the instance moments before, with ``X-Consul-KnownLeader: true`` as often
    as not), so one rule guards the set: **in stale mode an empty answer never replaces a
    non-empty set until a default-consistency read confirms it.** On an empty stale answer the
    loop asks once more without ``stale`` (the leader answers): an empty confirmation empties
    the set, a non-empty one is applied instead, and a failed one ("No cluster leader", an
    unreachable agent) keeps the last known set until the next stale answer, which is
    confirmed again. KnownLeader is not consulted: it is neither needed (without a leader the
    confirmation fails) nor enough (a server that says it knows one answered ``[]`` too).
    Non-empty stale answers apply at once, and writes (registration) need a leader either way.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        wait: float = 30.0,
        backoff_base: float = 0.1,
        backoff_cap: float = 2.0,
        recovery_grace: float = 30.0,
        token: str = "",
        stale: bool = False,
        api: ConsulApi | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wait = wait
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.recovery_grace = recovery_grace
        self.stale = stale  # decides each read's consistency, whatever an ``api`` passed in defaults to
        self._api = api or ConsulApi(address, token=token, stale=stale)
        self._rng = rng or random.Random()
        self._clock = clock
        self._feeds: dict[str, EndpointFeed] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._watchers: dict[str, set[FeedWatcher]] = {}

    def watch(self, name: str) -> FeedWatcher:
        """A watcher on ``name``; the first one starts the (shared) blocking-query loop."""
        feed = self._feeds.get(name)
        if feed is None:
            feed = self._feeds[name] = EndpointFeed(name)
        if name not in self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks[name] = loop.create_task(self._poll(feed), name=f"consul-watch-{name}")
        watcher = FeedWatcher(feed, on_close=lambda w: self._release(name, w))
        self._watchers.setdefault(name, set()).add(watcher)
        return watcher

    def _release(self, name: str, watcher: FeedWatcher) -> None:
        watchers = self._watchers.get(name, set())
        watchers.discard(watcher)
        if not watchers:
            self._watchers.pop(name, None)
            self._feeds.pop(name, None)
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()

    async def close(self) -> None:
        """Cancel every loop and close the HTTP session."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        self._feeds.clear()
        self._watchers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._api.close()

    async def _read(self, name: str, index: str | None, wait: float) -> tuple[str, list[HealthEntry]]:
        if self.stale:
            return await self._api.health(name, index=index, wait=wait, stale=True)
        return await self._api.health(name, index=index, wait=wait)

    async def _confirm_empty(self, feed: EndpointFeed, warned: bool) -> Endpoints | None:
        """A default-consistency read after an empty stale answer; None when it fails (keep the set)."""
        try:
            _, entries = await self._api.health(feed.name, stale=False)
        except Exception as exc:  # RegistryUnavailable ("No cluster leader"), or a bad answer
            if not warned:
                log.warning(
                    "a stale read found no passing %r and a default read could not confirm it; "
                    "keeping %d last known endpoints: %s",
                    feed.name,
                    len(feed.endpoints),
                    exc,
                )
            return None
        instances = tuple(entry.instance for entry in entries)
        if instances:
            log.info("a stale read found no passing %r; the leader still lists %d", feed.name, len(instances))
        return instances

    async def _poll(self, feed: EndpointFeed) -> None:
        index: str | None = None
        failures = 0
        hold_until = 0.0  # while now < hold_until, an empty answer does not replace a non-empty set
        held = False
        unconfirmed = False  # stale mode: an empty answer is being kept, its confirmation failed
        while True:
            wait = self.wait
            if hold_until:
                wait = max(0.0, min(wait, hold_until - self._clock()))
            try:
                new_index, entries = await self._read(feed.name, index, wait)
            except Exception as exc:  # RegistryUnavailable, or an answer we could not parse
                failures += 1
                # The agent may come back as a new one with a lower index than ours; a blocking
                # query with our old index would then hang until it caught up.
                index = None
                if failures == 1:
                    log.warning(
                        "consul unreachable; keeping %d last known endpoints of %r: %s",
                        len(feed.endpoints),
                        feed.name,
                        exc,
                    )
                await asyncio.sleep(backoff_delay(failures, self.backoff_base, self.backoff_cap, self._rng))
                continue
            if failures or (index is not None and _as_int(new_index) < _as_int(index)):
                # Back from an outage, or the index went backwards (the agent lost its state).
                log.info("consul answered again for %r after %d failures", feed.name, failures)
                failures = 0
                hold_until = self._clock() + self.recovery_grace
            index = new_index if _as_int(new_index) > 0 else None
            instances = tuple(entry.instance for entry in entries)
            if not instances and feed.endpoints and hold_until > self._clock():
                if not held:
                    log.warning(
                        "consul has no passing %r right after recovering; keeping %d endpoints "
                        "for up to %.0fs",
                        feed.name,
                        len(feed.endpoints),
                        self.recovery_grace,
                    )
                held = True
                continue
            hold_until, held = 0.0, False
            if self.stale and not instances and feed.endpoints:
                confirmed = await self._confirm_empty(feed, unconfirmed)
                if confirmed is None:
                    unconfirmed = True
                    continue
                instances = confirmed
            unconfirmed = False
            if feed.publish(instances):
                log.info("%r endpoints: %s", feed.name, ", ".join(e.target for e in instances) or "none")


def _as_int(index: str) -> int:
    try:
        return int(index)
    except ValueError:
        return 0
