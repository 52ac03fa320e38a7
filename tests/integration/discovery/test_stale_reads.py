"""Stale reads (MESH_CONSUL_STALE=1) against a real Consul dev agent.

One agent is its own leader, so these show the request Consul gets and that its blocking
queries work with ``?stale`` (an instance arrives, then leaves, each waking the query); what
stale reads do for a cluster without a leader is the unit tests' business
(tests/unit/mesh/test_stale_discovery.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from mesh.registry.consul import ConsulDiscovery
from mesh.registry.consul_api import ConsulApi, HealthEntry
from tests.integration.discovery.conftest import ConsulAgent

NAME = "stale-echo"


def register(consul: ConsulAgent, service_id: str, port: int, status: str) -> None:
    """Register ``service_id`` with a TTL check already in ``status`` (no process behind it)."""
    consul.put(
        "/v1/agent/service/register",
        {
            "ID": service_id,
            "Name": NAME,
            "Address": "127.0.0.1",
            "Port": port,
            "Check": {"CheckID": f"ttl-{service_id}", "TTL": "60s", "Status": status},
        },
    )


def record_requests(api: ConsulApi) -> list[tuple[str, list[tuple[str, str]]]]:
    """Every path and query parameters the api's HTTP client sends from now on."""
    sent: list[tuple[str, list[tuple[str, str]]]] = []
    http = api._consul().http
    original = http.get

    def get(callback: Any, path: str, params: Any = None, **kwargs: Any) -> Any:
        sent.append((path, list(params or ())))
        return original(callback, path, params=params, **kwargs)

    http.get = get
    return sent


async def until_listed(api: ConsulApi, within: float) -> tuple[str, list[HealthEntry]]:
    """Blocking stale queries from index 0 until the answer lists an instance."""
    async with asyncio.timeout(within):
        index, rows = await api.health(NAME)
        while not rows:
            index, rows = await api.health(NAME, index=index, wait=5.0)
    return index, rows


async def test_a_stale_blocking_query_returns_the_passing_instance_and_sees_it_leave(
    consul: ConsulAgent,
) -> None:
    api = ConsulApi(consul.http_addr, stale=True)
    sent = record_requests(api)
    try:
        register(consul, "stale-critical", 7002, "critical")
        register(consul, "stale-passing", 7001, "passing")
        index, rows = await until_listed(api, within=10)
        assert [(r.instance.id, r.instance.target, r.status) for r in rows] == [
            ("stale-passing", "127.0.0.1:7001", "passing")
        ]

        waiting = asyncio.create_task(api.health(NAME, index=index, wait=10.0))
        done, _ = await asyncio.wait({waiting}, timeout=0.3)
        assert not done, "a blocking query with the current index answered before anything changed"
        consul.put("/v1/agent/service/deregister/stale-passing")
        left = time.monotonic()
        new_index, rows = await asyncio.wait_for(waiting, 5)
        assert rows == [] and int(new_index) > int(index)
        assert time.monotonic() - left < 2.0  # woken by the change, not by the wait running out

        assert sent and all(path == f"/v1/health/service/{NAME}" for path, _ in sent)
        assert all(("stale", "") in params and ("passing", "1") in params for _, params in sent)
        assert (("index", index), ("wait", "10s")) == tuple(
            p for p in sent[-1][1] if p[0] in ("index", "wait")
        )
        assert api.known_leader is True  # the dev agent is its own leader, and says so
    finally:
        await api.close()


async def test_a_stale_discovery_follows_an_instance_in_and_out(consul: ConsulAgent) -> None:
    discovery = ConsulDiscovery(consul.http_addr, stale=True)
    watcher = discovery.watch(NAME)
    try:
        async with asyncio.timeout(10):
            assert await watcher.next() == ()  # nothing registered yet
            register(consul, "stale-passing", 7001, "passing")
            (instance,) = await watcher.next()
            assert (instance.id, instance.target) == ("stale-passing", "127.0.0.1:7001")
            consul.put("/v1/agent/service/deregister/stale-passing")
            # Empty in stale mode: applied once the default read (the leader here) confirms it.
            assert await watcher.next() == ()
    finally:
        watcher.close()
        await discovery.close()
