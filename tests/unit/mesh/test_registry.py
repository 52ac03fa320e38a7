"""Watch semantics without Consul: a scripted agent API drives ConsulDiscovery and the registrar."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest

from mesh.errors import RegistryUnavailable
from mesh.registry.base import ServiceInstance
from mesh.registry.consul import ConsulDiscovery, ConsulRegistrar, backoff_delay, instance_for
from mesh.registry.consul_api import HealthEntry, health_entry, parse_address
from mesh.registry.static import StaticDiscovery
from mesh.server.lifecycle import BoundServer

A = ServiceInstance("a", "svc", "127.0.0.1", 1001)
B = ServiceInstance("b", "svc", "127.0.0.1", 1002)
DOWN = RegistryUnavailable("consul", "connection refused")


def entries(*instances: ServiceInstance) -> list[HealthEntry]:
    return [HealthEntry(i, "passing", ()) for i in instances]


class ScriptedApi:
    """Answers health queries from a script; blocks (like an idle blocking query) when it runs out."""

    def __init__(self, script: Sequence[tuple[str, list[HealthEntry]] | Exception]) -> None:
        self.script = list(script)
        self.queries: list[tuple[str | None, float]] = []
        self.registered: dict[str, ServiceInstance] = {}
        self.register_calls = 0
        self.down = False
        self.closed = False
        self.pushed: asyncio.Event | None = None

    def push(self, step: tuple[str, list[HealthEntry]] | Exception) -> None:
        self.script.append(step)
        if self.pushed is not None:
            self.pushed.set()

    async def health(
        self, name: str, *, index: str | None = None, wait: float = 0.0, passing: bool = True
    ) -> tuple[str, list[HealthEntry]]:
        self.queries.append((index, wait))
        while not self.script:
            self.pushed = asyncio.Event()
            await self.pushed.wait()
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    async def register(self, instance: ServiceInstance, check: Any) -> None:
        self.register_calls += 1
        if self.down:
            raise DOWN
        self.registered[instance.id] = instance

    async def deregister(self, service_id: str) -> None:
        if self.down:
            raise DOWN
        self.registered.pop(service_id, None)

    async def is_registered(self, service_id: str) -> bool:
        if self.down:
            raise DOWN
        return service_id in self.registered

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def discovery(api: ScriptedApi, clock: Clock | None = None, grace: float = 30.0) -> ConsulDiscovery:
    return ConsulDiscovery(
        api=api,
        backoff_base=0.001,
        backoff_cap=0.002,
        recovery_grace=grace,  # type: ignore[arg-type]
        rng=random.Random(0),
        clock=clock or Clock(),
    )


async def settle(api: ScriptedApi) -> None:
    """Let the poll loop consume its script."""
    for _ in range(200):
        if not api.script:
            break
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)


async def test_first_answer_then_each_change_is_returned_once() -> None:
    api = ScriptedApi([("5", entries(A))])
    d = discovery(api)
    watcher = d.watch("svc")
    assert await watcher.next() == (A,)
    api.push(("6", entries(A, B)))
    assert await watcher.next() == (A, B)
    await settle(api)
    assert api.queries[0] == (None, 30.0) and api.queries[1] == ("5", 30.0) and api.queries[2] == ("6", 30.0)
    await d.close()
    assert api.closed


async def test_one_upstream_query_serves_every_watcher_of_a_name() -> None:
    api = ScriptedApi([("5", entries(A))])
    d = discovery(api)
    first, second = d.watch("svc"), d.watch("svc")
    assert await first.next() == await second.next() == (A,)
    await settle(api)
    assert len(api.queries) == 2  # the first answer, then one blocking query: not one per watcher
    await d.close()


async def test_registry_errors_keep_the_last_known_endpoints() -> None:
    api = ScriptedApi([("5", entries(A, B)), DOWN, DOWN, DOWN])
    d = discovery(api)
    watcher = d.watch("svc")
    assert await watcher.next() == (A, B)
    await settle(api)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await watcher.next()
    await d.close()


async def test_an_empty_answer_right_after_an_outage_is_held_back_for_the_grace_period() -> None:
    clock = Clock()
    api = ScriptedApi([("50", entries(A)), DOWN, ("3", entries()), ("4", entries())])
    d = discovery(api, clock, grace=30.0)
    watcher = d.watch("svc")
    assert await watcher.next() == (A,)
    await settle(api)
    # Both empty answers arrived within the grace period: still A, and the next blocking
    # query waits no longer than what is left of the grace.
    assert api.queries[-1] == ("4", 30.0)
    clock.now = 31.0
    api.push(("4", entries()))
    async with asyncio.timeout(5):
        assert await watcher.next() == ()
    await d.close()


async def test_an_empty_answer_after_the_index_went_backwards_is_held_back_too() -> None:
    api = ScriptedApi([("50", entries(A)), ("2", entries())])
    d = discovery(api)
    watcher = d.watch("svc")
    assert await watcher.next() == (A,)
    await settle(api)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await watcher.next()
    await d.close()


async def test_a_plain_empty_answer_is_applied() -> None:
    api = ScriptedApi([("5", entries(A))])
    d = discovery(api)
    watcher = d.watch("svc")
    assert await watcher.next() == (A,)
    api.push(("6", entries()))
    assert await watcher.next() == ()
    await d.close()


async def test_a_non_empty_answer_during_recovery_is_applied_at_once() -> None:
    api = ScriptedApi([("50", entries(A, B))])
    d = discovery(api)
    watcher = d.watch("svc")
    assert await watcher.next() == (A, B)
    for step in (DOWN, ("3", entries()), ("4", entries(B))):
        api.push(step)
    assert await watcher.next() == (B,)
    await d.close()


async def test_closing_the_last_watcher_stops_the_upstream_query() -> None:
    api = ScriptedApi([("5", entries(A))])
    d = discovery(api)
    watcher = d.watch("svc")
    await watcher.next()
    task = d._tasks["svc"]
    watcher.close()
    await asyncio.sleep(0)
    assert task.cancelled() or task.done()
    assert "svc" not in d._tasks
    await d.close()


def test_backoff_is_jittered_exponential_and_capped() -> None:
    rng = random.Random(0)
    for attempt, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (10, 2.0)):
        delays = [backoff_delay(attempt, 0.1, 2.0, rng) for _ in range(100)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 50


def bound(port: int = 7001) -> BoundServer:
    return BoundServer(
        "inventory",
        "127.0.0.1",
        port,
        ("shop.inventory.v1.InventoryService",),
        "1.2.3",
        ("blue",),
        {"zone": "a"},
    )


def test_instances_are_published_with_a_stable_id_and_what_they_serve() -> None:
    instance = instance_for(bound())
    assert instance.id == "inventory-127.0.0.1-7001"
    assert instance.tags == ("blue",)
    assert dict(instance.meta) == {
        "version": "1.2.3",
        "grpc_services": "shop.inventory.v1.InventoryService",
        "zone": "a",
    }


def test_the_check_is_a_grpc_health_check_with_a_deregister_safety_net() -> None:
    registrar = ConsulRegistrar(api=ScriptedApi([]))  # type: ignore[arg-type]
    check = registrar.check_for(instance_for(bound()))
    assert check["GRPC"] == "127.0.0.1:7001"
    assert (check["Interval"], check["Timeout"], check["DeregisterCriticalServiceAfter"]) == (
        "1s",
        "1s",
        "60s",
    )
    with pytest.raises(ValueError):
        ConsulRegistrar(deregister_after=30)


async def test_registrar_registers_again_whatever_the_agent_forgot() -> None:
    api = ScriptedApi([])
    registrar = ConsulRegistrar(api=api, resync_interval=0.01)  # type: ignore[arg-type]
    await registrar.on_started(bound())
    assert set(api.registered) == {"inventory-127.0.0.1-7001"}
    api.registered.clear()  # the agent restarted empty
    for _ in range(100):
        if api.registered:
            break
        await asyncio.sleep(0.01)
    assert set(api.registered) == {"inventory-127.0.0.1-7001"}
    await registrar.on_stopping()
    assert api.registered == {} and api.closed


async def test_registrar_starts_while_consul_is_down_and_registers_once_it_is_back() -> None:
    api = ScriptedApi([])
    api.down = True
    registrar = ConsulRegistrar(api=api, resync_interval=0.01)  # type: ignore[arg-type]
    await registrar.on_started(bound())  # does not raise
    await asyncio.sleep(0.05)
    assert api.registered == {}
    api.down = False
    for _ in range(200):
        if api.registered:
            break
        await asyncio.sleep(0.01)
    assert set(api.registered) == {"inventory-127.0.0.1-7001"}
    api.down = True
    await registrar.on_stopping()  # logs, does not raise


async def test_static_discovery_resolves_unknown_names_to_nothing_and_follows_set() -> None:
    d = StaticDiscovery({"svc": ["127.0.0.1:1001"]})
    watcher = d.watch("svc")
    (only,) = await watcher.next()
    assert only.target == "127.0.0.1:1001"
    d.set("svc", [A, B])
    assert await watcher.next() == (A, B)
    assert await d.watch("other").next() == ()


def test_consul_rows_and_addresses_are_parsed() -> None:
    row = {
        "Node": {"Address": "10.0.0.9"},
        "Service": {"ID": "x-1", "Service": "x", "Address": "", "Port": 80, "Tags": None, "Meta": None},
        "Checks": [
            {"CheckID": "serfHealth", "Status": "passing"},
            {"CheckID": "service:x-1", "Status": "critical"},
        ],
    }
    entry = health_entry(row)
    assert entry.instance.target == "10.0.0.9:80"
    assert entry.status == "critical"
    assert parse_address("http://127.0.0.1:8501") == ("127.0.0.1", 8501, "http")
    assert parse_address("127.0.0.1") == ("127.0.0.1", 8500, "http")
    assert parse_address("https://consul.local:443") == ("consul.local", 443, "https")
    with pytest.raises(ValueError):
        parse_address("http://:x")
