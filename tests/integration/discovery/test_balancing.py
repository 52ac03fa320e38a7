"""Balancing over real server processes discovered through a real Consul agent."""

from __future__ import annotations

import asyncio
import time

from mesh.channel import mesh_channel
from mesh.registry.consul import ConsulDiscovery
from tests.integration.discovery.conftest import ConsulAgent, StartEcho, wait_passing, wait_until
from tests.integration.discovery.echo_server import ECHO
from tests.integration.discovery.load import Load


async def test_round_robin_spreads_300_calls_evenly_over_3_instances(
    consul: ConsulAgent, start_echo: StartEcho
) -> None:
    instances = [start_echo() for _ in range(3)]
    await wait_passing(consul, "echo", {e.target for e in instances})
    discovery = ConsulDiscovery(consul.http_addr)
    channel = mesh_channel("echo", discovery, balancer="round_robin")
    try:
        await channel.wait_for_endpoints(3, within=10)
        echo = channel.unary_unary(ECHO)
        answers = [await echo(b"", timeout=5) for _ in range(300)]
        counts = {e.label: answers.count(e.label + b"|") for e in instances}
        assert all(90 <= count <= 110 for count in counts.values()), counts
    finally:
        await channel.close()
        await discovery.close()


async def test_p2c_sends_clearly_fewer_calls_to_a_slow_instance(
    consul: ConsulAgent, start_echo: StartEcho
) -> None:
    fast = [start_echo() for _ in range(2)]
    slow = start_echo(delay_ms=250)
    await wait_passing(consul, "echo", {e.target for e in (*fast, slow)})
    discovery = ConsulDiscovery(consul.http_addr)
    channel = mesh_channel("echo", discovery)  # the default: P2C on least outstanding
    try:
        await channel.wait_for_endpoints(3, within=10)
        echo = channel.unary_unary(ECHO)
        answers: list[bytes] = []

        async def worker() -> None:
            for _ in range(50):
                answers.append((await echo(b"", timeout=5)).split(b"|")[0])

        await asyncio.gather(*(worker() for _ in range(12)))
        counts = {e.label: answers.count(e.label) for e in (*fast, slow)}
        fair = len(answers) / 3
        assert counts[slow.label] < fair / 3, counts  # under a third of a fair share
        assert all(counts[f.label] > fair for f in fast), counts
    finally:
        await channel.close()
        await discovery.close()


async def test_a_new_instance_gets_traffic_within_2s_of_passing(
    consul: ConsulAgent, start_echo: StartEcho
) -> None:
    instances = [start_echo() for _ in range(2)]
    await wait_passing(consul, "echo", {e.target for e in instances})
    discovery = ConsulDiscovery(consul.http_addr)
    channel = mesh_channel("echo", discovery)
    try:
        await channel.wait_for_endpoints(2, within=10)
        echo = channel.unary_unary(ECHO)
        async with Load(lambda: echo(b"", timeout=5), rate=100, max_seconds=30) as result:
            newcomer = await asyncio.to_thread(start_echo)
            await wait_passing(consul, "echo", {e.target for e in (*instances, newcomer)}, within=10)
            passing_at = time.monotonic()
            await wait_until(lambda: newcomer.label in result.first_seen, 5, "traffic to the new instance")
        assert result.first_seen[newcomer.label] - passing_at < 2.0
        assert result.failures == []
    finally:
        await channel.close()
        await discovery.close()
