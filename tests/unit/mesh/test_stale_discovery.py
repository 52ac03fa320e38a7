"""Stale Consul reads without Consul: a scripted API answers stale and default reads apart.

The rule under test (mesh/registry/consul.py, ConsulDiscovery): in stale mode an empty answer
never replaces a non-empty endpoint set until a default-consistency read confirms it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from consul.base import Response

from mesh.errors import ConfigError, RegistryUnavailable
from mesh.registry import ConsulDiscovery, consul_stale_from_env, make_discovery
from mesh.registry.base import ServiceInstance
from mesh.registry.consul_api import ConsulApi, HealthEntry

A = ServiceInstance("a", "svc", "127.0.0.1", 1001)
B = ServiceInstance("b", "svc", "127.0.0.1", 1002)
NO_LEADER = RegistryUnavailable("consul", "health of 'svc': ConsulException('500 No cluster leader')")

Step = tuple[str, list[HealthEntry]] | Exception


def entries(*instances: ServiceInstance) -> list[HealthEntry]:
    return [HealthEntry(i, "passing", ()) for i in instances]


class ConsistencyApi:
    """Blocking reads come from ``reads``, default-consistency confirmations from ``defaults``.

    A blocking read blocks (like an idle blocking query) when its script runs out; a default
    read with nothing scripted fails as a leaderless cluster would.
    """

    def __init__(self, reads: Sequence[Step], defaults: Sequence[Step] = ()) -> None:
        self.reads = list(reads)
        self.defaults = list(defaults)
        self.calls: list[tuple[str | None, float, bool | None]] = []  # (index, wait, stale)
        self.closed = False
        self._pushed = asyncio.Event()

    def push(self, step: Step) -> None:
        self.reads.append(step)
        self._pushed.set()

    @property
    def default_reads(self) -> int:
        return sum(1 for call in self.calls if call[2] is False)

    async def health(
        self,
        name: str,
        *,
        index: str | None = None,
        wait: float = 0.0,
        passing: bool = True,
        stale: bool | None = None,
    ) -> tuple[str, list[HealthEntry]]:
        self.calls.append((index, wait, stale))
        if stale is False:
            step = self.defaults.pop(0) if self.defaults else NO_LEADER
        else:
            while not self.reads:
                self._pushed = asyncio.Event()
                await self._pushed.wait()
            step = self.reads.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    async def close(self) -> None:
        self.closed = True


def discovery(api: ConsistencyApi, *, stale: bool = True) -> ConsulDiscovery:
    return ConsulDiscovery(
        api=api,  # type: ignore[arg-type]
        stale=stale,
        backoff_base=0.001,
        backoff_cap=0.002,
        rng=random.Random(0),
    )


async def settle(api: ConsistencyApi) -> None:
    """Let the poll loop consume its script and start its next blocking read."""
    for _ in range(500):
        if not api.reads and api.calls and api.calls[-1][2] is not False:
            break
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.01)


async def nothing_new(watcher: Any) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await watcher.next()


async def test_stale_mode_sends_every_blocking_read_stale() -> None:
    api = ConsistencyApi([("5", entries(A))])
    d = discovery(api)
    watcher = d.watch("svc")
    assert await watcher.next() == (A,)
    api.push(("6", entries(A, B)))
    assert await watcher.next() == (A, B)
    await settle(api)
    assert api.calls == [(None, 30.0, True), ("5", 30.0, True), ("6", 30.0, True)]
    await d.close()
    assert api.closed


async def test_default_mode_leaves_consistency_to_the_api_and_never_confirms() -> None:
    api = ConsistencyApi([("5", entries(A))])
    d = discovery(api, stale=False)
    watcher = d.watch("svc")
    assert await watcher.next() == (A,)
    api.push(("6", entries()))
    async with asyncio.timeout(5):
        assert await watcher.next() == ()
    assert {call[2] for call in api.calls} == {None} and api.default_reads == 0
    await d.close()


async def test_a_stale_empty_answer_keeps_the_endpoints_while_no_leader_can_confirm_it() -> None:
    api = ConsistencyApi([("5", entries(A, B)), ("6", entries())], defaults=[NO_LEADER])
    d = discovery(api)
    watcher = d.watch("svc")
    assert await watcher.next() == (A, B)
    await settle(api)
    await nothing_new(watcher)
    assert api.default_reads == 1
    assert api.calls[-1] == ("6", 30.0, True)  # then blocks on the empty answer's index
    await d.close()


async def test_a_stale_empty_answer_confirmed_by_a_default_read_empties_the_set() -> None:
    api = ConsistencyApi([("5", entries(A))], defaults=[("7", entries())])
    d = discovery(api)
    watcher = d.watch("svc")
    assert await watcher.next() == (A,)
    api.push(("6", entries()))
    async with asyncio.timeout(5):
        assert await watcher.next() == ()
    assert api.default_reads == 1
    await d.close()


async def test_a_default_read_that_still_lists_instances_wins_over_a_stale_empty_answer() -> None:
    api = ConsistencyApi([("5", entries(A))], defaults=[("7", entries(B))])
    d = discovery(api)
    watcher = d.watch("svc")
    assert await watcher.next() == (A,)
    api.push(("6", entries()))
    async with asyncio.timeout(5):
        assert await watcher.next() == (B,)
    await d.close()


async def test_the_empty_answer_is_confirmed_again_once_a_leader_is_back() -> None:
    api = ConsistencyApi([("5", entries(A)), ("6", entries())], defaults=[NO_LEADER, ("8", entries())])
    d = discovery(api)
    watcher = d.watch("svc")
    assert await watcher.next() == (A,)
    await settle(api)
    await nothing_new(watcher)
    api.push(("6", entries()))  # the blocking query's wait ran out: the same empty answer
    async with asyncio.timeout(5):
        assert await watcher.next() == ()
    assert api.default_reads == 2
    await d.close()


async def test_non_empty_stale_answers_apply_at_once_without_a_default_read() -> None:
    api = ConsistencyApi([("5", entries(A))])
    d = discovery(api)
    watcher = d.watch("svc")
    assert await watcher.next() == (A,)
    api.push(("6", entries(B)))
    async with asyncio.timeout(5):
        assert await watcher.next() == (B,)
    assert api.default_reads == 0
    await d.close()


async def test_a_first_empty_stale_answer_is_applied_without_a_default_read() -> None:
    api = ConsistencyApi([("5", entries())])
    d = discovery(api)
    watcher = d.watch("svc")
    async with asyncio.timeout(5):
        assert await watcher.next() == ()
    assert api.default_reads == 0
    await d.close()


# ConsulApi: the raw stale request, on a fake py-consul client.


class FakeHttp:
    def __init__(self, headers: dict[str, str], body: str = "[]", code: int = 200) -> None:
        self.headers = headers
        self.body = body
        self.code = code
        self.gets: list[tuple[str, list[tuple[str, str]], dict[str, str]]] = []

    async def get(self, callback: Any, path: str, params: Any = None, headers: Any = None) -> Any:
        self.gets.append((path, list(params or ()), dict(headers or {})))
        return callback(Response(self.code, self.headers, self.body))


class FakeHealth:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def service(self, name: str, **kwargs: Any) -> tuple[str, list[Any]]:
        self.calls.append({"name": name, **kwargs})
        return "3", []


class FakeClient:
    dc = None

    def __init__(self, http: FakeHttp) -> None:
        self.http = http
        self.health = FakeHealth()

    def prepare_headers(self) -> dict[str, str]:
        return {"X-Consul-Token": "secret"}


ROW = (
    '[{"Node": {"Address": "10.0.0.1"}, "Service": {"ID": "a", "Service": "svc", "Address": "",'
    ' "Port": 1001}, "Checks": [{"CheckID": "c", "Status": "passing"}]}]'
)


def fake_api(http: FakeHttp, *, stale: bool = True) -> tuple[ConsulApi, FakeClient]:
    api = ConsulApi("127.0.0.1:8500", token="secret", stale=stale)
    client = FakeClient(http)
    api._client = client  # the lazily built py-consul client
    return api, client


async def test_a_stale_read_sends_the_usual_parameters_plus_stale_and_the_token() -> None:
    http = FakeHttp({"X-Consul-Index": "9", "X-Consul-Knownleader": "true"}, ROW)
    api, client = fake_api(http)
    index, rows = await api.health("svc", index="7", wait=5.0)
    assert (index, [r.instance.target for r in rows]) == ("9", ["10.0.0.1:1001"])
    assert http.gets == [
        (
            "/v1/health/service/svc",
            [("index", "7"), ("wait", "5s"), ("passing", "1"), ("stale", "")],
            {"X-Consul-Token": "secret"},
        )
    ]
    assert client.health.calls == [] and api.known_leader is True
    await api.health("svc")  # not blocking: no index, no wait
    assert http.gets[-1][1] == [("passing", "1"), ("stale", "")]


async def test_stale_false_on_a_stale_api_is_a_default_read_through_py_consul() -> None:
    http = FakeHttp({"X-Consul-Index": "9"})
    api, client = fake_api(http)
    assert await api.health("svc", stale=False) == ("3", [])
    assert http.gets == [] and client.health.calls == [
        {"name": "svc", "index": None, "wait": None, "passing": True}
    ]
    default_api, default_client = fake_api(FakeHttp({}), stale=False)
    await default_api.health("svc", index="4", wait=2.0)
    assert default_client.health.calls == [{"name": "svc", "index": "4", "wait": "2s", "passing": True}]


async def test_a_server_that_knows_no_leader_is_noted_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    http = FakeHttp({"X-Consul-Index": "9", "X-Consul-Knownleader": "false"})
    api, _ = fake_api(http)
    with caplog.at_level(logging.INFO, logger="mesh.registry.consul_api"):
        await api.health("svc")
        await api.health("svc")
        assert api.known_leader is False
        http.headers["X-Consul-Knownleader"] = "true"
        await api.health("svc")
    assert api.known_leader is True
    messages = [r.getMessage() for r in caplog.records]
    assert sum("without knowing a cluster leader" in m for m in messages) == 1
    assert sum("knows a cluster leader again" in m for m in messages) == 1


async def test_a_failed_stale_read_is_registry_unavailable() -> None:
    api, _ = fake_api(FakeHttp({}, "No cluster leader", code=500))
    with pytest.raises(RegistryUnavailable, match="No cluster leader"):
        await api.health("svc")
    assert api.known_leader is None  # an error answer tells nothing about the leader


# The switch: MESH_CONSUL_STALE, read by services and gateway, passed to the discovery.


def test_mesh_consul_stale_is_1_or_0_and_off_by_default() -> None:
    assert consul_stale_from_env({}) is False
    assert consul_stale_from_env({"MESH_CONSUL_STALE": " 1 "}) is True
    assert consul_stale_from_env({"MESH_CONSUL_STALE": "0"}) is False
    with pytest.raises(ConfigError, match="MESH_CONSUL_STALE must be 1 or 0, got 'yes'"):
        consul_stale_from_env({"MESH_CONSUL_STALE": "yes"})


def test_services_and_the_gateway_read_mesh_consul_stale() -> None:
    from gateway.settings import settings_from_env
    from services.common.settings import service_settings_from_env

    assert service_settings_from_env("order", {"MESH_CONSUL_STALE": "1"}).consul_stale is True
    assert service_settings_from_env("order", {}).consul_stale is False
    assert settings_from_env({"MESH_CONSUL_STALE": "1"}).consul_stale is True
    assert settings_from_env({}).consul_stale is False
    with pytest.raises(ConfigError, match="MESH_CONSUL_STALE"):
        service_settings_from_env("order", {"MESH_CONSUL_STALE": "2"})
    with pytest.raises(ConfigError, match="MESH_CONSUL_STALE"):
        settings_from_env({"MESH_CONSUL_STALE": "true"})


async def test_make_discovery_builds_a_stale_consul_discovery() -> None:
    stale = make_discovery("127.0.0.1:8500", stale=True)
    default = make_discovery("127.0.0.1:8500")
    assert isinstance(stale, ConsulDiscovery) and isinstance(default, ConsulDiscovery)
    assert stale.stale and stale._api.stale
    assert not default.stale and not default._api.stale
    await stale.close()
    await default.close()


class Built(Exception):
    """Raised by the make_discovery spy once it has seen its arguments."""


async def test_the_gateway_builds_its_discovery_with_the_stale_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway import __main__ as entry
    from gateway.settings import settings_from_env

    seen: list[dict[str, Any]] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        raise Built

    monkeypatch.setattr(entry, "make_discovery", spy)
    settings = settings_from_env({"MESH_CONSUL_STALE": "1", "MESH_INSECURE": "1"})
    with pytest.raises(Built):
        await entry.serve(settings, None, None)
    assert seen and seen[0]["stale"] is True


async def test_a_service_builds_its_discovery_with_the_stale_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import mesh.app
    from services.common import app
    from services.common.settings import service_settings_from_env

    seen: list[dict[str, Any]] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        raise Built

    async def build(context: Any) -> Any:
        raise AssertionError("the spy stops the start before any service is built")

    monkeypatch.setattr(mesh.app, "make_discovery", spy)
    environ = {
        "MESH_CONSUL_STALE": "1",
        "MESH_INSECURE": "1",
        "MESH_DATA_DIR": str(tmp_path),
    }
    settings = service_settings_from_env("inventory", environ)
    (tmp_path / "migrations").mkdir()
    with pytest.raises(Built):
        await app.run(settings, tmp_path / "migrations", build)
    assert seen and seen[0]["stale"] is True
