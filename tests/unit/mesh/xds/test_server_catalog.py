"""The Consul follower of ``mesh xds`` without Consul: a scripted reader answers its queries.

Rules under test (mesh/xds/catalog.py): a name enters only with its first health answer and
the first snapshot waits for all of them; errors keep the last state; a name gone from the
catalog is dropped; right after an outage removals are held back; in stale mode an emptying
answer needs a default read to confirm it. The reader's HTTP side is tested against a real
agent in tests/integration/xds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mesh.errors import RegistryUnavailable
from mesh.resilience.backoff import Backoff
from mesh.xds.catalog import CatalogFollower, xds_service
from mesh.xds.model import XdsEndpoint, XdsService
from tests.support.waiting import wait_until

DOWN = RegistryUnavailable("consul", "connection refused")
Step = tuple[str, object] | Exception


def service(name: str, *ports: int, healthy: bool = True) -> XdsService:
    return XdsService(
        name, tuple(XdsEndpoint(f"{name}-{p}", "127.0.0.1", p, "node1", "dc1", healthy) for p in ports)
    )


class ScriptedReader:
    """Blocking reads take the next scripted step (or block until one is pushed); default reads
    (``stale=False`` with no index, in stale mode) come from ``defaults``."""

    def __init__(self) -> None:
        self.services_steps: list[Step] = []
        self.health_steps: dict[str, list[Step]] = {}
        self.defaults: list[Step] = []
        self.calls: list[tuple[str, str | None, float, bool]] = []
        self.closed = False
        self._pushed = asyncio.Event()

    def push_services(self, *steps: Step) -> None:
        self.services_steps.extend(steps)
        self._wake()

    def push_health(self, name: str, *steps: Step) -> None:
        self.health_steps.setdefault(name, []).extend(steps)
        self._wake()

    def _wake(self) -> None:
        pushed, self._pushed = self._pushed, asyncio.Event()
        pushed.set()

    async def _next(self, queue: list[Step]) -> object:
        while not queue:
            await self._pushed.wait()
        step = queue.pop(0)
        if isinstance(step, Exception):
            raise step
        return step

    async def services(self, *, index: str | None, wait: float, stale: bool) -> tuple[str, list[str]]:
        self.calls.append(("services", index, wait, stale))
        step = await self._next(
            self.defaults if index is None and not stale and self.defaults else self.services_steps
        )
        return step  # type: ignore[return-value]

    async def health(
        self, name: str, *, index: str | None, wait: float, stale: bool
    ) -> tuple[str, XdsService]:
        self.calls.append((name, index, wait, stale))
        if index is None and not stale and wait == 0.0 and self.defaults:
            return await self._next(self.defaults)  # type: ignore[return-value]
        return await self._next(self.health_steps.setdefault(name, []))  # type: ignore[return-value]

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
async def reader() -> AsyncIterator[ScriptedReader]:
    yield ScriptedReader()


def follower(reader: ScriptedReader, **options: object) -> CatalogFollower:
    defaults: dict[str, object] = {
        "wait": 30.0,
        "recovery_grace": 0.0,
        "first_within": 0.0,
        "backoff": Backoff(initial=0.001, maximum=0.001),
    }
    defaults.update(options)
    return CatalogFollower(reader, **defaults)  # type: ignore[arg-type]


async def next_snapshot(follow: CatalogFollower, version: int) -> dict[str, XdsService]:
    await asyncio.wait_for(follow.wait_newer(version), 5)
    return dict(follow.snapshot.services)


async def test_the_first_snapshot_waits_for_every_first_health_answer(reader: ScriptedReader) -> None:
    follow = follower(reader)
    reader.push_services(("5", ["consul", "inventory", "payment"]))
    reader.push_health("inventory", ("6", service("inventory", 1001, 1002)))
    await follow.start()
    try:
        await wait_until(lambda: any(c[0] == "payment" for c in reader.calls), 5, "payment asked")
        assert not follow.published  # payment has not answered: no snapshot yet
        reader.push_health("payment", ("7", service("payment", 2001)))
        snapshot = await next_snapshot(follow, 0)
        assert snapshot == {
            "inventory": service("inventory", 1001, 1002),
            "payment": service("payment", 2001),
        }
        assert "consul" not in snapshot  # the servers' own entry is no mesh service
        # The next health query blocks on the index of the last answer.
        await wait_until(lambda: ("inventory", "6", 30.0, False) in reader.calls, 5, "blocking query")
    finally:
        await follow.close()
    assert reader.closed


async def test_a_name_without_a_first_answer_is_left_out_after_first_within(reader: ScriptedReader) -> None:
    follow = follower(reader, first_within=0.05)
    reader.push_services(("5", ["inventory", "slow"]))
    reader.push_health("inventory", ("6", service("inventory", 1001)))
    await follow.start()
    try:
        assert await next_snapshot(follow, 0) == {"inventory": service("inventory", 1001)}
        reader.push_health("slow", ("8", service("slow", 3001)))
        assert set(await next_snapshot(follow, 1)) == {"inventory", "slow"}
    finally:
        await follow.close()


async def test_nothing_is_published_while_the_catalog_never_answered(reader: ScriptedReader) -> None:
    follow = follower(reader, first_within=0.01)
    reader.push_services(DOWN, DOWN, DOWN)
    await follow.start()
    try:
        await wait_until(lambda: len(reader.calls) >= 4, 5, "retries after errors")
        assert not follow.published  # an error is never published as "no services"
    finally:
        await follow.close()


async def test_errors_keep_the_last_state_and_changes_then_flow_again(reader: ScriptedReader) -> None:
    follow = follower(reader)
    reader.push_services(("5", ["inventory"]))
    reader.push_health("inventory", ("6", service("inventory", 1001, 1002)))
    await follow.start()
    try:
        await next_snapshot(follow, 0)
        reader.push_health("inventory", DOWN, DOWN)
        reader.push_services(DOWN)
        await wait_until(lambda: sum(1 for c in reader.calls if c[0] == "inventory") >= 4, 5, "retried")
        assert follow.version == 1 and follow.snapshot.services["inventory"] == service(
            "inventory", 1001, 1002
        )
        # After an error the query starts over without an index (the agent may be a new one).
        # The services query retries beside it, so look at the last of inventory's own calls.
        inventory_calls = [call for call in reader.calls if call[0] == "inventory"]
        assert inventory_calls[-1][:2] == ("inventory", None)
        reader.push_health("inventory", ("9", service("inventory", 1001)))
        assert (await next_snapshot(follow, 1))["inventory"] == service("inventory", 1001)
    finally:
        await follow.close()


async def test_unhealthy_instances_stay_listed_as_unhealthy(reader: ScriptedReader) -> None:
    follow = follower(reader)
    reader.push_services(("5", ["inventory"]))
    reader.push_health("inventory", ("6", service("inventory", 1001)))
    await follow.start()
    try:
        await next_snapshot(follow, 0)
        reader.push_health("inventory", ("7", service("inventory", 1001, healthy=False)))
        (endpoint,) = (await next_snapshot(follow, 1))["inventory"].endpoints
        assert not endpoint.healthy
        reader.push_health("inventory", ("8", service("inventory", 1001, healthy=False)))
        reader.push_health("inventory", ("9", service("inventory", 1002)))
        snapshot = await next_snapshot(follow, 2)  # an identical answer published nothing
        assert follow.version == 3 and snapshot["inventory"] == service("inventory", 1002)
    finally:
        await follow.close()


async def test_a_service_gone_from_the_catalog_is_dropped(reader: ScriptedReader) -> None:
    follow = follower(reader)
    reader.push_services(("5", ["inventory", "payment"]))
    reader.push_health("inventory", ("6", service("inventory", 1001)))
    reader.push_health("payment", ("6", service("payment", 2001)))
    await follow.start()
    try:
        await next_snapshot(follow, 0)
        reader.push_services(("7", ["inventory"]))
        assert set(await next_snapshot(follow, 1)) == {"inventory"}
    finally:
        await follow.close()


async def test_right_after_an_outage_removals_wait_for_the_grace(reader: ScriptedReader) -> None:
    now = [100.0]
    follow = follower(reader, recovery_grace=10.0, clock=lambda: now[0])
    reader.push_services(("50", ["inventory"]))
    reader.push_health("inventory", ("60", service("inventory", 1001)))
    await follow.start()
    try:
        await next_snapshot(follow, 0)
        # The agent restarted empty: its index went backwards and it knows nothing yet.
        reader.push_services(("3", []))
        await wait_until(lambda: any(c[:2] == ("services", "3") for c in reader.calls), 5, "held")
        assert set(follow.snapshot.services) == {"inventory"}
        # The held query blocks no longer than the grace that is left.
        assert next(c for c in reader.calls if c[:2] == ("services", "3"))[2] == 10.0
        now[0] += 11.0  # the grace ran out with nothing registered again: the removal applies
        reader.push_services(("3", []))
        assert await next_snapshot(follow, 1) == {}
    finally:
        await follow.close()


async def test_a_stale_emptying_answer_applies_only_when_a_default_read_confirms_it(
    reader: ScriptedReader,
) -> None:
    follow = follower(reader, stale=True)
    reader.push_services(("5", ["inventory"]))
    reader.push_health("inventory", ("6", service("inventory", 1001)))
    await follow.start()
    try:
        await next_snapshot(follow, 0)
        reader.defaults.append(DOWN)  # no leader: the confirmation fails, the endpoints stay
        reader.push_health("inventory", ("7", service("inventory")))
        await wait_until(lambda: not reader.defaults, 5, "confirmation tried")
        assert follow.version == 1 and follow.snapshot.services["inventory"].endpoints
        reader.defaults.append(("8", service("inventory")))  # the leader agrees: none left
        reader.push_health("inventory", ("8", service("inventory")))
        assert (await next_snapshot(follow, 1))["inventory"].endpoints == ()
        assert all(
            stale for name, index, _, stale in reader.calls if name == "inventory" and index is not None
        )
    finally:
        await follow.close()


def test_a_health_row_becomes_an_endpoint_with_its_node_and_datacenter() -> None:
    rows = [
        {
            "Node": {"Node": "host-b", "Datacenter": "dc2", "Address": "10.0.0.2"},
            "Service": {"ID": "inv-2", "Service": "inventory", "Address": "", "Port": 9002},
            "Checks": [
                {"CheckID": "serfHealth", "Status": "passing"},
                {"CheckID": "grpc", "Status": "critical"},
            ],
        },
        {
            "Node": {"Node": "host-a", "Datacenter": "dc2", "Address": "10.0.0.1"},
            "Service": {"ID": "inv-1", "Service": "inventory", "Address": "10.0.0.1", "Port": 9001},
            "Checks": [{"CheckID": "grpc", "Status": "passing"}],
        },
    ]
    assert xds_service("inventory", rows) == XdsService(
        "inventory",
        (
            XdsEndpoint("inv-1", "10.0.0.1", 9001, "host-a", "dc2", True),
            XdsEndpoint("inv-2", "10.0.0.2", 9002, "host-b", "dc2", False),
        ),
    )
