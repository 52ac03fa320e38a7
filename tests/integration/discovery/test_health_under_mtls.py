"""Under mTLS, a killed or a frozen instance leaves Consul's passing set within about a second.

The secure port wants a client certificate Consul's gRPC check cannot present, so the check
dials each instance's plaintext health-only listener instead: this makes sure that listener
dies and freezes with its process, and that detection is as quick as the check allows.
Consul runs the check every ``MESH_CHECK_INTERVAL_SECONDS`` (set to 1 s here) with the
registrar's check timeout (``ConsulRegistrar``'s ``check_timeout``, 1 s):

- a killed instance refuses the next check: gone within one interval;
- a frozen one (SIGSTOP: its kernel still accepts the connection, nobody answers) fails when
  the next check times out: gone within interval + timeout.

Each bound adds 1 s for the agent's own turn on a loaded machine, as the plaintext SIGKILL
test in test_chaos.py does. The measured figures print with ``pytest -s``.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import time
from collections.abc import Callable

import pytest

from mesh.channel import mesh_channel
from mesh.connect.setup import ConnectedWorkload
from mesh.registry.consul import ConsulDiscovery, ConsulRegistrar
from tests.integration.discovery.conftest import ConsulAgent, StartEcho, wait_passing
from tests.integration.discovery.echo_server import ECHO
from tests.support.freeze import freeze
from tests.support.waiting import wait_until

# One at a time under `make test` (--dist loadgroup): two load tests side by side on a small
# machine starve each other's processes until Consul's 1 s health checks time out.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("discovery-chaos")]

CHECK_INTERVAL_SECONDS = 1.0
CHECK_TIMEOUT_SECONDS: float = inspect.signature(ConsulRegistrar).parameters["check_timeout"].default
KILLED_BOUND_SECONDS = CHECK_INTERVAL_SECONDS + 1.0
FROZEN_BOUND_SECONDS = CHECK_INTERVAL_SECONDS + CHECK_TIMEOUT_SECONDS + 1.0


async def seconds_until(predicate: Callable[[], bool], since: float, what: str) -> float:
    """Poll ``predicate`` (bounded); the seconds from ``since`` until it held."""
    await wait_until(predicate, 10, what, step=0.02)
    return time.monotonic() - since


async def test_a_killed_and_a_frozen_instance_each_leave_the_passing_set_within_their_check_bound(
    consul: ConsulAgent, start_echo: StartEcho, tester: ConnectedWorkload
) -> None:
    interval = {"MESH_CHECK_INTERVAL_SECONDS": str(CHECK_INTERVAL_SECONDS)}
    instances = [start_echo(mtls=True, **interval) for _ in range(3)]
    killed, frozen, survivor = instances
    await wait_passing(consul, "echo", {e.target for e in instances})
    metas = [row["Meta"] for row in consul.passing("echo")]
    assert len(metas) == 3 and all(isinstance(m, dict) and m.get("mtls") == "on" for m in metas), metas

    def passing() -> set[str]:
        return {f"{s['Address']}:{s['Port']}" for s in consul.passing("echo")}

    discovery = ConsulDiscovery(consul.http_addr)
    channel = mesh_channel("echo", discovery, identity=tester.identity)
    try:
        await channel.wait_for_endpoints(3, within=10)
        echo = channel.unary_unary(ECHO)
        assert {(await echo(b"", timeout=5)).split(b"|")[0] for _ in range(30)} == {
            e.label for e in instances
        }

        killed_at = time.monotonic()
        killed.signal(signal.SIGKILL)
        kill_seconds = await seconds_until(lambda: killed.target not in passing(), killed_at, "killed gone")

        frozen_at = time.monotonic()
        assert frozen.process is not None
        await asyncio.to_thread(freeze, frozen.process.pid)
        freeze_seconds = await seconds_until(lambda: frozen.target not in passing(), frozen_at, "frozen gone")
        channel_seconds = await seconds_until(
            lambda: {e.target for e in channel.endpoints} == {survivor.target},
            frozen_at,
            "frozen instance dropped from the channel",
        )
        print(
            f"under mTLS: killed instance left the passing set after {kill_seconds:.3f} s, "
            f"frozen one after {freeze_seconds:.3f} s (out of the channel after {channel_seconds:.3f} s); "
            f"bounds {KILLED_BOUND_SECONDS:g} s and {FROZEN_BOUND_SECONDS:g} s"
        )
        assert frozen.process is not None and frozen.process.poll() is None  # frozen, not dead
        assert kill_seconds < KILLED_BOUND_SECONDS, kill_seconds
        assert freeze_seconds < FROZEN_BOUND_SECONDS, freeze_seconds
        assert channel_seconds < FROZEN_BOUND_SECONDS, channel_seconds
        assert passing() == {survivor.target}
        # Dropped means no call goes there: every one is the survivor's.
        assert {(await echo(b"", timeout=5)).split(b"|")[0] for _ in range(30)} == {survivor.label}
    finally:
        frozen.signal(signal.SIGCONT)
        frozen.kill()
        await channel.close()
        await discovery.close()
