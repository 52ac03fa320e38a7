"""Faults under a steady load: a killed instance, a rolling restart, Consul itself going away.

Each test owns its Consul agent and processes, so they can run side by side under
pytest-xdist. "0 failed calls" is asserted over every call the load made, and the load is
checked to have really been at least 100 calls/s.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from mesh.channel import MeshChannel, mesh_channel
from mesh.registry.consul import ConsulDiscovery
from tests.integration.discovery.conftest import ConsulAgent, EchoProcess, StartEcho, wait_passing, wait_until
from tests.integration.discovery.echo_server import ECHO
from tests.integration.discovery.load import Load, LoadResult

pytestmark = pytest.mark.slow

RATE = 150.0


def assert_clean(result: LoadResult, seconds: float) -> None:
    assert result.failures == [], result.failures[:5]
    assert result.ok >= 100 * seconds, f"only {result.ok} calls in {seconds:.1f}s"


async def three_instances(
    consul: ConsulAgent, start_echo: StartEcho
) -> tuple[list[EchoProcess], MeshChannel, ConsulDiscovery]:
    instances = [start_echo() for _ in range(3)]
    await wait_passing(consul, "echo", {e.target for e in instances})
    discovery = ConsulDiscovery(consul.http_addr)
    channel = mesh_channel("echo", discovery)
    await channel.wait_for_endpoints(3, within=10)
    return instances, channel, discovery


async def test_sigkill_one_of_three_under_load_loses_no_call(
    consul: ConsulAgent, start_echo: StartEcho
) -> None:
    instances, channel, discovery = await three_instances(consul, start_echo)
    victim = instances[0]
    echo = channel.unary_unary(ECHO)
    try:
        async with Load(lambda: echo(b"", timeout=5), rate=RATE, max_seconds=30) as result:
            await asyncio.sleep(2.0)  # steady state first
            killed_at = time.monotonic()
            victim.signal(signal.SIGKILL)
            gone = await wait_until(
                lambda: victim.target not in {e.target for e in channel.endpoints},
                5,
                "killed instance dropped",
            )
            await asyncio.sleep(10.0 - (time.monotonic() - killed_at))
        seconds = time.monotonic() - result.started
        assert_clean(result, seconds - 1)
        assert gone <= 1.0 + 1.0  # check interval + 1 s
        assert result.last_seen.get(victim.label, 0.0) <= killed_at
        assert all(result.by_label[e.label] > 0 for e in instances[1:])
    finally:
        await channel.close()
        await discovery.close()


async def test_rolling_restart_under_load_loses_no_call(consul: ConsulAgent, start_echo: StartEcho) -> None:
    instances, channel, discovery = await three_instances(consul, start_echo)
    echo = channel.unary_unary(ECHO)
    try:
        async with Load(lambda: echo(b"", timeout=5), rate=RATE, max_seconds=60) as result:
            await asyncio.sleep(1.0)
            for index, old in enumerate(list(instances)):
                assert await asyncio.to_thread(old.terminate) == 0
                instances[index] = await asyncio.to_thread(
                    start_echo, port=old.port
                )  # same port, new process
                await wait_passing(consul, "echo", {e.target for e in instances}, within=10)
                await wait_until(
                    lambda: len(channel.endpoints) == 3, 5, "restarted instance back in the channel"
                )
            await asyncio.sleep(1.0)
        assert_clean(result, time.monotonic() - result.started - 1)
    finally:
        await channel.close()
        await discovery.close()


async def test_consul_down_for_10s_under_load_loses_no_call_and_recovers(
    consul: ConsulAgent, start_echo: StartEcho
) -> None:
    instances, channel, discovery = await three_instances(consul, start_echo)
    echo = channel.unary_unary(ECHO)
    try:
        async with Load(lambda: echo(b"", timeout=5), rate=RATE, max_seconds=60) as result:
            await asyncio.sleep(1.0)
            consul.stop()
            await asyncio.sleep(10.0)
            assert len(channel.endpoints) == 3  # last known endpoints kept
            await asyncio.to_thread(consul.start)  # a dev agent comes back empty: instances register again
            await wait_passing(consul, "echo", {e.target for e in instances}, within=15)
            await asyncio.sleep(1.0)
        assert_clean(result, 10.0)
        assert {e.target for e in channel.endpoints} == {e.target for e in instances}
        # The watcher is live again: a change after recovery reaches the channel.
        instances[0].terminate()
        await wait_until(lambda: len(channel.endpoints) == 2, 5, "change seen after recovery")
    finally:
        await channel.close()
        await discovery.close()
