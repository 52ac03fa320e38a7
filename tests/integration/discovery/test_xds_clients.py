"""Real xDS clients against ``mesh xds``, a real Consul agent and real mTLS echo servers.

The clients (tests/support/xds_client.py: plain grpcio, no tsunagu import; xds_client.js:
Node's @grpc/grpc-js-xds) know nothing but the bootstrap file: endpoints, balancing,
retries, outlier ejection and the mTLS identity they accept all come from the control plane,
which follows Consul with blocking queries. Every test here checks what a client saw, call by
call, never the control plane's own idea of it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.xds.model import CLUSTER
from tests.integration.discovery.conftest import ConsulAgent, EchoProcess, StartEcho, wait_passing
from tests.support.connect import set_intention
from tests.support.freeze import freeze
from tests.support.xds import ControlPlane, XdsClient, failures, labels

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("xds-clients")]

FAST_CHECKS = {"MESH_CHECK_INTERVAL_SECONDS": "0.5"}


@pytest.fixture
def control_plane(consul: ConsulAgent, tmp_path: Path) -> Iterator[ControlPlane]:
    """``mesh xds`` handing the ``tester`` identity to its clients; tester may call echo."""
    set_intention(consul, "tester", "echo", "allow")
    plane = ControlPlane(consul.http_addr, tmp_path / "xds", client_identity="tester")
    try:
        yield plane
    finally:
        plane.kill()


def echoes(start_echo: StartEcho, count: int, **extra: str) -> list[EchoProcess]:
    return [start_echo("echo", mtls=True, **FAST_CHECKS, **extra) for _ in range(count)]


def client(plane: ControlPlane, tmp_path: Path, language: str, *options: str) -> XdsClient:
    out = tmp_path / f"{language}-{time.monotonic_ns()}.jsonl"
    return XdsClient(language, "xds:///echo", plane.bootstrap, out, options).start()


async def passing(consul: ConsulAgent, servers: list[EchoProcess]) -> None:
    await wait_passing(consul, "echo", {s.target for s in servers}, within=20)


def with_policy(plane: ControlPlane, tmp_path: Path, text: str) -> Path:
    """The control plane will read this policy file (written now; a test may rewrite it)."""
    policy = tmp_path / "policy.toml"
    policy.write_text(text)
    plane.policy_file = policy
    return policy


async def test_python_and_node_clients_spread_calls_over_the_passing_instances(
    consul: ConsulAgent, start_echo: StartEcho, control_plane: ControlPlane, tmp_path: Path
) -> None:
    servers = echoes(start_echo, 3)
    await passing(consul, servers)
    control_plane.start()

    runs = [client(control_plane, tmp_path, language, "--calls", "300") for language in ("python", "node")]
    for run in runs:
        await asyncio.to_thread(run.wait)

    expected = {s.label.decode() for s in servers}
    for run in runs:
        calls = run.calls()
        assert len(calls) == 300, run.language
        assert failures(calls) == [], (run.language, failures(calls)[:3])
        counts = labels(calls)
        assert set(counts) == expected, (run.language, counts)
        assert min(counts.values()) >= 60, (run.language, counts)  # round robin: ~100 each
    served = control_plane.admin("/clients")
    assert len(served) >= 1, served  # both may have left by now; at least one was recorded


async def test_a_frozen_instance_stops_getting_calls_within_2_s(
    consul: ConsulAgent, start_echo: StartEcho, control_plane: ControlPlane, tmp_path: Path
) -> None:
    servers = echoes(start_echo, 3)
    await passing(consul, servers)
    control_plane.start()
    stop = tmp_path / "stop"
    run = client(control_plane, tmp_path, "python", "--workers", "6", "--timeout", "1", "--stop", str(stop))
    victim = servers[1]
    try:
        await wait_for_calls(run, 60)
        frozen_at = time.time()
        assert victim.process is not None
        await asyncio.to_thread(freeze, victim.process.pid)
        await asyncio.sleep(5)  # load runs on: calls after the freeze are what the test reads
        stop.touch()
        await asyncio.to_thread(run.wait)
    finally:
        victim.signal(signal.SIGCONT)
    calls = run.calls()
    after = [c for c in calls if c.start > frozen_at]
    lost = failures(after)
    last_sent_to_victim = max((c.start for c in lost), default=frozen_at) - frozen_at
    assert last_sent_to_victim < 2.0, f"a call sent {last_sent_to_victim:.2f}s after the freeze still hung"
    late = [c for c in after if c.start > frozen_at + 2.0]
    assert len(late) > 50 and failures(late) == []
    assert victim.label.decode() not in labels(late)
    assert all(c.code == "DEADLINE_EXCEEDED" for c in lost), lost[:3]


async def test_an_instance_answering_unavailable_is_ejected_by_outlier_detection(
    consul: ConsulAgent, start_echo: StartEcho, control_plane: ControlPlane, tmp_path: Path
) -> None:
    healthy = echoes(start_echo, 2)
    failing = echoes(start_echo, 1, ECHO_FAIL_CODE="UNAVAILABLE")[0]
    await passing(consul, [*healthy, failing])
    control_plane.start()

    run = client(control_plane, tmp_path, "python", "--workers", "4", "--seconds", "8", "--pause", "0.005")
    await asyncio.to_thread(run.wait)

    calls = run.calls()
    lost = failures(calls)
    assert lost, "the failing instance was never called: the test proves nothing"
    assert all(c.code == "UNAVAILABLE" for c in lost)
    first = calls[0].start
    tail = [c for c in calls if c.start > first + 4.0]  # ejected within the first seconds
    assert len(tail) > 100 and failures(tail) == [], f"{len(failures(tail))} of {len(tail)} still failed"


async def test_a_retry_policy_turns_a_flaky_instance_into_zero_failed_calls(
    consul: ConsulAgent, start_echo: StartEcho, control_plane: ControlPlane, tmp_path: Path
) -> None:
    with_policy(
        control_plane,
        tmp_path,
        "[services.echo]\nidempotent = true\n"
        '[services.echo.retry]\nmax_attempts = 3\nretryable_codes = ["UNAVAILABLE"]\n'
        "initial_backoff = 0.01\nmax_backoff = 0.05\n",
    )
    healthy = echoes(start_echo, 2)
    flaky = echoes(start_echo, 1, ECHO_FAIL_CODE="UNAVAILABLE")[0]
    await passing(consul, [*healthy, flaky])
    control_plane.start()

    # One caller: round robin then sends each retry to the next instance, so no call can meet
    # the flaky one three times (with concurrent callers the shared rotation allows it, rarely).
    run = client(control_plane, tmp_path, "python", "--workers", "1", "--calls", "300")
    await asyncio.to_thread(run.wait)

    calls = run.calls()
    assert len(calls) == 300 and failures(calls) == [], failures(calls)[:3]
    assert set(labels(calls)) == {s.label.decode() for s in healthy}


async def test_a_fault_in_the_policy_is_injected_by_the_clients_themselves(
    consul: ConsulAgent, start_echo: StartEcho, control_plane: ControlPlane, tmp_path: Path
) -> None:
    with_policy(
        control_plane,
        tmp_path,
        '[services.echo.fault]\nabort_percent = 50.0\nabort_code = "RESOURCE_EXHAUSTED"\n',
    )
    servers = echoes(start_echo, 2)
    await passing(consul, servers)
    control_plane.start()

    run = client(control_plane, tmp_path, "node", "--workers", "2", "--calls", "400")
    await asyncio.to_thread(run.wait)

    calls = run.calls()
    aborted = failures(calls)
    assert {c.code for c in aborted} == {"RESOURCE_EXHAUSTED"}, aborted[:3]
    assert 120 <= len(aborted) <= 280, len(aborted)  # about half, injected before any server saw them
    assert set(labels(calls)) == {s.label.decode() for s in servers}


async def test_a_config_the_client_nacks_leaves_it_on_the_previous_one_and_the_error_is_logged(
    consul: ConsulAgent, start_echo: StartEcho, control_plane: ControlPlane, tmp_path: Path
) -> None:
    policy = with_policy(control_plane, tmp_path, '[services.echo.balancer]\nkind = "round_robin"\n')
    servers = echoes(start_echo, 2)
    await passing(consul, servers)
    control_plane.start()
    stop = tmp_path / "stop"
    run = client(control_plane, tmp_path, "python", "--workers", "2", "--pause", "0.01", "--stop", str(stop))
    try:
        await wait_for_calls(run, 20)
        before = cluster_state(control_plane)
        assert before["acked_version"] == before["sent_version"] and before["nack"] is None, before
        # least_request is valid xDS that Go and Java clients balance by; grpc core NACKs it.
        policy.write_text('[services.echo.balancer]\nkind = "least_request"\n')
        control_plane.signal(signal.SIGHUP)
        nacked = await until_nacked(control_plane)
        made = len(run.calls())
        await wait_for_calls(run, made + 100)  # still calling, on the config it had
    finally:
        stop.touch()
        await asyncio.to_thread(run.wait)
    calls = run.calls()
    assert failures(calls) == [], failures(calls)[:3]
    assert set(labels(calls[-100:])) == {s.label.decode() for s in servers}
    assert nacked["acked_version"] == before["acked_version"]  # the client stayed where it was
    assert nacked["sent_version"] != before["sent_version"]
    message = nacked["nack"]["message"]
    assert message and nacked["nack"]["version"] == nacked["sent_version"], nacked
    assert message[:60] in control_plane.logs(), "the client's error is not in the control plane's log"


def cluster_state(plane: ControlPlane) -> dict[str, Any]:
    """The CDS state of the one connected client, as the admin endpoint reports it."""
    connected = [c for c in plane.admin("/clients") if c["connected"]]
    assert len(connected) == 1, connected
    state: dict[str, Any] = connected[0]["types"][CLUSTER]
    return state


async def until_nacked(plane: ControlPlane, within: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        state = cluster_state(plane)
        if state["nack"] is not None:
            return state
        if time.monotonic() > deadline:
            raise AssertionError(f"no NACK within {within}s: {state}")
        await asyncio.sleep(0.1)


async def test_clients_keep_their_config_through_a_control_plane_restart_and_a_consul_outage(
    consul: ConsulAgent, start_echo: StartEcho, control_plane: ControlPlane, tmp_path: Path
) -> None:
    servers = echoes(start_echo, 2)
    await passing(consul, servers)
    control_plane.start()
    stop = tmp_path / "stop"
    runs = [
        client(control_plane, tmp_path, language, "--workers", "2", "--pause", "0.01", "--stop", str(stop))
        for language in ("python", "node")
    ]
    try:
        for run in runs:
            await wait_for_calls(run, 20)
        control_plane.kill()  # SIGKILL: no goodbye to the clients
        await asyncio.sleep(3)  # clients run on their last config
        control_plane.start()
        assert consul.process is not None
        try:
            await asyncio.to_thread(freeze, consul.process.pid)  # Consul unreachable: queries hang
            await asyncio.sleep(10)
        finally:
            os.kill(consul.process.pid, signal.SIGCONT)
        newcomer = echoes(start_echo, 1)[0]  # after the outage: clients must resync to see it
        await passing(consul, [*servers, newcomer])
        resynced = await wait_for_label(runs, newcomer.label.decode(), within=15)
    finally:
        stop.touch()
        for run in runs:
            await asyncio.to_thread(run.wait)
    assert resynced, "no client called the instance registered after the outage"
    for run in runs:
        calls = run.calls()
        assert failures(calls) == [], (run.language, failures(calls)[:3])
        assert newcomer.label.decode() in labels(calls), run.language


async def wait_for_calls(run: XdsClient, count: int, within: float = 30.0) -> None:
    """Until ``run`` has made ``count`` calls (the first needs the control plane's answers)."""
    deadline = time.monotonic() + within
    while len(run.calls()) < count:
        assert run.process is not None and run.process.poll() is None, run.wait()
        if time.monotonic() > deadline:
            raise AssertionError(f"{run.language}: {len(run.calls())} calls after {within}s")
        await asyncio.sleep(0.1)


async def wait_for_label(runs: list[XdsClient], label: str, within: float) -> bool:
    """Until every run has had a call answered by ``label``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(label in labels(run.calls()) for run in runs):
            return True
        await asyncio.sleep(0.1)
    return False
