"""Following Consul's catalog into immutable :class:`~mesh.xds.model.CatalogSnapshot` values.

One blocking query on ``/v1/catalog/services`` finds the names; per name, one blocking query
on ``/v1/health/service/<name>`` (every instance, not only passing ones: the resource builder
marks the failing ones unhealthy, which xDS clients understand) gives its endpoints with the
node and datacenter they run in. A name enters the snapshot only with its first health
answer, and the first snapshot is published only once every name of the first catalog
answer has had one (or ``first_within`` passed): a client must not be told "no such service"
because the follower had not asked yet.

Why the care about failures: the snapshot feeds every xDS client's load balancing, so a
Consul hiccup must not empty it.

- A failed query keeps the last state (logged once per outage, retried with jittered backoff).
- Right after an outage, or when an index goes backwards (the agent lost its state, as a
  restarted dev agent does), removals are held back for ``recovery_grace`` seconds: such an
  agent answers "no services" until the registrars have found it again.
- With ``stale=True`` (``MESH_CONSUL_STALE=1``) any server answers from its own state, which
  can be incomplete; a stale answer that removes a name, or empties a service, is applied
  only once a default-consistency read confirms it (see :mod:`mesh.registry.consul`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

import aiohttp

from mesh.errors import RegistryUnavailable
from mesh.registry.consul_api import health_entry, parse_address
from mesh.resilience.backoff import Backoff
from mesh.xds.model import CatalogSnapshot, XdsEndpoint, XdsService

log = logging.getLogger(__name__)

CONSUL_SELF = "consul"  # the servers' own entry: not a mesh service


class CatalogReader(Protocol):
    """The two reads the follower makes; ``index``/``wait`` make them blocking queries."""

    async def services(self, *, index: str | None, wait: float, stale: bool) -> tuple[str, list[str]]: ...

    async def health(
        self, name: str, *, index: str | None, wait: float, stale: bool
    ) -> tuple[str, XdsService]: ...

    async def close(self) -> None: ...


def xds_service(name: str, rows: Iterable[Mapping[str, Any]]) -> XdsService:
    """A health answer (every instance) as an :class:`XdsService`, endpoints in a stable order."""
    endpoints = []
    for row in rows:
        entry = health_entry(row)
        node = row.get("Node") or {}
        endpoints.append(
            XdsEndpoint(
                instance_id=entry.instance.id,
                address=entry.instance.address,
                port=entry.instance.port,
                node=str(node.get("Node", "")),
                datacenter=str(node.get("Datacenter", "")),
                healthy=entry.status == "passing",
            )
        )
    endpoints.sort(key=lambda e: (e.address, e.port, e.instance_id))
    return XdsService(name, tuple(endpoints))


class ConsulCatalogReader:
    """:class:`CatalogReader` over HTTP, plus the agent's own datacenter and node.

    Its own small client rather than :class:`mesh.registry.consul_api.ConsulApi`, because the
    follower needs the node and datacenter of each row and a catalog blocking query, which
    that typed face does not give.
    """

    def __init__(self, address: str, *, token: str = "", request_timeout: float = 5.0) -> None:
        host, port, scheme = parse_address(address)
        self.address = f"{scheme}://{host}:{port}"
        self._headers = {"X-Consul-Token": token} if token else {}
        self._timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None

    async def _get(
        self, what: str, path: str, *, index: str | None, wait: float, stale: bool
    ) -> tuple[str, Any]:
        params: dict[str, str] = {}
        if index and wait > 0:  # an index without a wait blocks for Consul's default 5 minutes
            params.update(index=index, wait=f"{wait:g}s")
        if stale:
            params["stale"] = ""
        # Consul adds up to wait/16 of jitter to a blocking query; allow for it and the network.
        limit = self._timeout + (wait * 1.1 if "wait" in params else 0.0)
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        try:
            async with asyncio.timeout(limit):
                async with self._session.get(self.address + path, params=params) as response:
                    text = await response.text()
                    if response.status != 200:
                        raise RegistryUnavailable(
                            "consul", f"{what} at {self.address}: {response.status} {text.strip()[:200]}"
                        )
                    return response.headers.get("X-Consul-Index", ""), await response.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            raise RegistryUnavailable("consul", f"{what} at {self.address}: {error!r}") from error

    async def services(self, *, index: str | None, wait: float, stale: bool) -> tuple[str, list[str]]:
        new_index, data = await self._get(
            "list services", "/v1/catalog/services", index=index, wait=wait, stale=stale
        )
        return new_index, sorted(str(name) for name in data or {})

    async def health(
        self, name: str, *, index: str | None, wait: float, stale: bool
    ) -> tuple[str, XdsService]:
        new_index, rows = await self._get(
            f"health of {name!r}", f"/v1/health/service/{name}", index=index, wait=wait, stale=stale
        )
        return new_index, xds_service(name, rows or ())

    async def agent_self(self) -> tuple[str, str]:
        """The local agent's (datacenter, node name); needs ``agent:read`` under ACLs."""
        _, data = await self._get("agent self", "/v1/agent/self", index=None, wait=0.0, stale=False)
        config = (data or {}).get("Config") or {}
        return str(config.get("Datacenter", "")), str(config.get("NodeName", ""))

    async def datacenters(self) -> list[str]:
        """Every datacenter, the local one first (no ACL needed)."""
        _, data = await self._get("datacenters", "/v1/catalog/datacenters", index=None, wait=0.0, stale=False)
        return [str(dc) for dc in data or ()]

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _as_int(index: str | None) -> int:
    try:
        return int(index or 0)
    except ValueError:
        return 0


class CatalogFollower:
    """Blocking queries on the catalog and each service's health, published as snapshots."""

    def __init__(
        self,
        reader: CatalogReader,
        *,
        wait: float = 30.0,
        stale: bool = False,
        recovery_grace: float = 30.0,
        first_within: float = 5.0,
        exclude: Iterable[str] = (CONSUL_SELF,),
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wait = wait
        self.stale = stale
        self.recovery_grace = recovery_grace
        self.first_within = first_within
        self.snapshot = CatalogSnapshot()
        self.version = 0  # 0: nothing published yet
        self._reader = reader
        self._exclude = frozenset(exclude)
        self._backoff = backoff or Backoff(initial=0.1, maximum=5.0)
        self._clock = clock
        self._services: dict[str, XdsService] = {}
        self._names: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._main: list[asyncio.Task[None]] = []
        self._listed = False  # the catalog has answered once
        self._relaxed = False  # first_within passed: publish without the slow first answers
        self._hold_until = 0.0
        self._changed = asyncio.Event()

    @property
    def published(self) -> bool:
        return self.version > 0

    async def start(self) -> None:
        """Start following (returns at once; :meth:`wait_newer` ``(0)`` waits for the first snapshot)."""
        loop = asyncio.get_running_loop()
        self._main = [loop.create_task(self._follow_names(), name="xds-catalog")]
        if self.first_within > 0:
            self._main.append(loop.create_task(self._first_deadline(), name="xds-catalog-first"))

    async def wait_newer(self, version: int) -> None:
        """Return once a snapshot newer than ``version`` is published."""
        while self.version == version:
            await self._changed.wait()

    async def close(self) -> None:
        tasks = [*self._main, *self._tasks.values()]
        self._main, self._tasks = [], {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._reader.close()

    def _holding(self) -> bool:
        return self._clock() < self._hold_until

    def _note_recovery(self, what: str, failures: int) -> None:
        if failures:
            log.info("consul answered again for %s after %d failures", what, failures)
        self._hold_until = self._clock() + self.recovery_grace

    def _publish(self) -> None:
        if not self.published:
            if not self._listed:
                return  # never publish before the catalog answered: that would say "nothing exists"
            if not self._relaxed and any(name not in self._services for name in self._names):
                return  # the first snapshot waits for every first answer (or first_within)
        self.snapshot = CatalogSnapshot(MappingProxyType(dict(sorted(self._services.items()))))
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _first_deadline(self) -> None:
        await asyncio.sleep(self.first_within)
        self._relaxed = True
        if not self.published and self._listed:
            missing = sorted(self._names - self._services.keys())
            log.warning("publishing the catalog without a first health answer for %s", ", ".join(missing))
            self._publish()

    def _query_wait(self) -> float:
        """A blocking query's wait: the usual one, cut short while removals are on hold."""
        if self._holding():
            return max(0.0, min(self.wait, self._hold_until - self._clock()))
        return self.wait

    async def _sleep_after(self, failures: int) -> None:
        await asyncio.sleep(self._backoff.delay(min(failures - 1, 30)))

    async def _follow_names(self) -> None:
        index: str | None = None
        failures = 0
        while True:
            wait = self._query_wait()
            try:
                new_index, listed = await self._reader.services(index=index, wait=wait, stale=self.stale)
            except Exception as error:  # RegistryUnavailable, or an answer we could not parse
                failures += 1
                index = None  # a new agent may answer with a lower index; ours would hang
                if failures == 1:
                    log.warning(
                        "consul catalog unreachable; keeping %d services: %s", len(self._names), error
                    )
                await self._sleep_after(failures)
                continue
            if failures or _as_int(new_index) < _as_int(index):
                self._note_recovery("the catalog", failures)
                failures = 0
            index = new_index if _as_int(new_index) > 0 else None
            await self._apply_names(set(listed) - self._exclude)

    async def _apply_names(self, names: set[str]) -> None:
        gone = self._names - names
        if gone and self._holding():
            names |= gone  # right after an outage: keep them until the grace has passed
            gone = set()
        if gone and self.stale:
            try:
                _, confirmed = await self._reader.services(index=None, wait=0.0, stale=False)
            except Exception as error:
                log.warning(
                    "a stale read dropped %s and a default read could not confirm it: %s", sorted(gone), error
                )
                names |= gone
                gone = set()
            else:
                kept = gone & set(confirmed)
                names |= kept
                gone -= kept
        loop = asyncio.get_running_loop()
        for name in sorted(names - self._names):
            self._tasks[name] = loop.create_task(self._follow_health(name), name=f"xds-health-{name}")
        for name in sorted(gone):
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()
        self._names = names
        self._listed = True
        dropped = [name for name in gone if self._services.pop(name, None) is not None]
        if dropped:
            log.info("services gone from consul: %s", ", ".join(sorted(dropped)))
        self._publish()

    async def _follow_health(self, name: str) -> None:
        index: str | None = None
        failures = 0
        while True:
            wait = self._query_wait()
            try:
                new_index, service = await self._reader.health(name, index=index, wait=wait, stale=self.stale)
            except Exception as error:
                failures += 1
                index = None
                if failures == 1:
                    known = self._services.get(name)
                    count = len(known.endpoints) if known else 0
                    log.warning("consul unreachable; keeping %d endpoints of %r: %s", count, name, error)
                await self._sleep_after(failures)
                continue
            if failures or _as_int(new_index) < _as_int(index):
                self._note_recovery(repr(name), failures)
                failures = 0
            index = new_index if _as_int(new_index) > 0 else None
            applied = await self._checked(name, service)
            if applied is not None and applied != self._services.get(name):
                self._services[name] = applied
                log.info(
                    "%r endpoints: %s",
                    name,
                    ", ".join(
                        f"{e.address}:{e.port}{'' if e.healthy else ' (unhealthy)'}"
                        for e in applied.endpoints
                    )
                    or "none",
                )
                self._publish()

    async def _checked(self, name: str, service: XdsService) -> XdsService | None:
        """``service`` if it may replace what is known, else None (keep the last state)."""
        known = self._services.get(name)
        if service.endpoints or known is None or not known.endpoints:
            return service
        if self._holding():
            return None  # emptied right after an outage: wait for the registrars
        if not self.stale:
            return service
        try:
            _, confirmed = await self._reader.health(name, index=None, wait=0.0, stale=False)
        except Exception as error:
            log.warning("a stale read emptied %r and a default read could not confirm it: %s", name, error)
            return None
        return confirmed
