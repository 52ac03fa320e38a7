"""The collector: Consul says which instances exist, each instance's ``/metrics`` says what it did.

:class:`MeshObserver` is what ``mesh top`` and the dashboard sample. Each :meth:`~MeshObserver.sample`
lists every service and instance (with health and node) from Consul, scrapes every instance's
``metrics_port`` concurrently, and folds the differences to earlier scrapes into one
:class:`~mesh.observe.model.MeshView` (:mod:`mesh.observe.fold`).

Why a sliding window: rates are taken against the newest earlier scrape at least
``window_seconds`` old (the oldest one until there is such a scrape), as ``rate(x[10s])``
would, so a display refreshed every two seconds shows steady numbers rather than the noise of
the last two seconds. The first sample has nothing to compare with: window 0, no rates.

Nothing here raises for the mesh's state: an instance that does not answer is
``scraped=False`` with the reason, and a Consul that does not answer gives the last view
known with ``consul_error`` set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable

import aiohttp

from mesh.errors import RegistryUnavailable
from mesh.observe.fold import InstanceSample, ProtoNames, fold
from mesh.observe.golden import increases
from mesh.observe.model import InstanceView, MeshView
from mesh.observe.scrape import Key, Scrape, fetch
from mesh.registry.consul_api import ConsulApi, HealthEntry

CONSUL_SELF = "consul"  # the agent's own entry, not a mesh service
# mesh.telemetry.METRICS_PORT_META, spelled out: importing telemetry would load the server and
# tracing stacks into a command that only reads.
METRICS_PORT_META = "metrics_port"
InstanceKey = tuple[str, str]  # (service, instance id)


def describe(error: BaseException) -> str:
    """An error as one line for a person (a timeout has no message of its own)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def metrics_url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/metrics"


class MeshObserver:
    """Samples the whole mesh on demand; keeps a few earlier scrapes per instance for the rates."""

    def __init__(
        self,
        consul_address: str,
        token: str = "",
        *,
        window_seconds: float = 10.0,
        scrape_timeout: float = 2.0,
        api: ConsulApi | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``api`` and ``clock`` (what the windows are measured with) are for tests."""
        self.consul_address = consul_address
        self.window_seconds = window_seconds
        self.scrape_timeout = scrape_timeout
        self._api = api or ConsulApi(consul_address, token=token, request_timeout=max(scrape_timeout, 1.0))
        self._session: aiohttp.ClientSession | None = None
        self._history: dict[InstanceKey, deque[tuple[float, Scrape]]] = {}
        self._protos = ProtoNames()
        self._last: MeshView | None = None
        self._clock = clock

    async def sample(self) -> MeshView:
        """One view of the mesh now (never raises for an unreachable Consul or instance)."""
        try:
            services = await self._services()
        except RegistryUnavailable as error:
            message = describe(error)
            if self._last is None:
                return MeshView(at=time.time(), window_seconds=0.0, consul_error=message)
            return dataclasses.replace(self._last, consul_error=message)
        entries = [entry for rows in services.values() for entry in rows]
        scraped = await asyncio.gather(*(self._scrape(entry) for entry in entries))
        # Health is asked again after the scrapes: a frozen instance's scrape waits out its
        # timeout, and the verdict Consul gave meanwhile is the one to show.
        services, scraped = await self._fresher_health(services, scraped)
        now = self._clock()
        samples = [self._rated(view, scrape, now) for view, scrape in scraped]
        present = {(view.service, view.instance_id) for view, _ in scraped}
        for gone in set(self._history) - present:
            del self._history[gone]
        self._last = fold(time.time(), services, samples, self._protos)
        return self._last

    async def _fresher_health(
        self, services: dict[str, list[HealthEntry]], scraped: list[tuple[InstanceView, Scrape | None]]
    ) -> tuple[dict[str, list[HealthEntry]], list[tuple[InstanceView, Scrape | None]]]:
        """``services`` and the scraped views with each instance's health as Consul says now."""
        try:
            fresh = await self._services()
        except RegistryUnavailable:
            return services, scraped  # the first answer of this sample stands
        now = {(e.instance.name, e.instance.id): e for rows in fresh.values() for e in rows}
        updated = {
            name: [now.get((e.instance.name, e.instance.id), e) for e in rows]
            for name, rows in services.items()
        }
        views = [
            (dataclasses.replace(view, health=now[key].status) if key in now else view, scrape)
            for view, scrape in scraped
            for key in [(view.service, view.instance_id)]
        ]
        return updated, views

    async def health_changed(self, index: str, wait: float) -> str:
        """Consul's health index once it moved past ``index`` (or ``wait`` s passed; "" asks at
        once): what lets a sampler show a new verdict without waiting for its next interval."""
        return await self._api.health_index(index, wait)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        await self._api.close()

    async def _services(self) -> dict[str, list[HealthEntry]]:
        names = sorted(name for name in await self._api.services() if name != CONSUL_SELF)
        answers = await asyncio.gather(*(self._api.health(name, passing=False) for name in names))
        return {name: rows for name, (_, rows) in zip(names, answers, strict=True)}

    async def _scrape(self, entry: HealthEntry) -> tuple[InstanceView, Scrape | None]:
        instance = entry.instance
        view = InstanceView(
            service=instance.name,
            instance_id=instance.id,
            address=instance.address,
            port=instance.port,
            node=entry.node,
            health=entry.status,
            metrics_port=None,
            scraped=False,
        )
        raw = instance.meta.get(METRICS_PORT_META, "")
        try:
            port = int(raw)
        except ValueError:
            why = f"bad {METRICS_PORT_META} {raw!r}" if raw else f"no {METRICS_PORT_META} in its Consul meta"
            return dataclasses.replace(view, error=why), None
        view = dataclasses.replace(view, metrics_port=port)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            scrape = await fetch(self._session, metrics_url(instance.address, port), self.scrape_timeout)
        except Exception as error:  # whatever it was, it is this instance's state, not ours
            return dataclasses.replace(view, error=describe(error)), None
        return dataclasses.replace(view, scraped=True), scrape

    def _rated(self, view: InstanceView, scrape: Scrape | None, now: float) -> InstanceSample:
        """Rates against the baseline scrape of this instance; the new scrape joins its history."""
        if scrape is None:
            return InstanceSample(view)
        history = self._history.setdefault((view.service, view.instance_id), deque())
        edge = now - self.window_seconds
        older = [entry for entry in history if entry[0] <= edge]
        base = older[-1] if older else (history[0] if history else None)
        history.append((now, scrape))
        while len(history) > 1 and history[1][0] <= edge:
            history.popleft()  # the next one is old enough to be the baseline
        if base is None or now <= base[0]:
            return InstanceSample(view, scrape)
        seconds = now - base[0]
        rates: dict[Key, float] = {key: grown / seconds for key, grown in increases(scrape, base[1]).items()}
        return InstanceSample(view, scrape, rates, seconds)
