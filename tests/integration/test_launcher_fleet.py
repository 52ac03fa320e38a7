"""`mesh scale` and `mesh restart` change the running shop under load, and no call fails.

The launcher runs as a real process (as in test_launcher_supervision.py). Clients keep calling
idempotent reads through the gateway the whole time: the product list (inventory) and a
customer's order list (order). Meanwhile the real ``mesh`` command, found through the control
file, scales inventory up to 3 and down to 1, restarts inventory (by then alone, so a
temporary companion keeps it served) and restarts the order service, rolling. Consul's
passing set follows each change, the launcher prints one line per event, and not one of the
clients' calls fails.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from services.launcher import TOKEN_DIR
from services.topology import SERVICES
from tests.integration.test_launcher_supervision import (
    READY_LINE,
    STARTED,
    Output,
    alive,
    launcher_env,
    passing_instances,
)
from tests.support.gateway_load import Load, gateway_call
from tests.support.launcher_run import stop_launcher
from tests.support.processes import ROOT
from tests.support.tokens import KeyPair
from tests.support.topologies import single_host

ONE_EACH = single_host()


def mesh_command(control_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args, "--control", str(control_file)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def wait_passing_counts(consul: str, expected: dict[str, int], within: float) -> None:
    cli = (TOKEN_DIR / "cli").read_text().strip()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        counts = passing_instances(consul, cli)
        if all(counts[name] == n for name, n in expected.items()):
            return
        time.sleep(0.2)  # poll interval
    raise AssertionError(f"passing instances {passing_instances(consul, cli)}, wanted {expected}")


@pytest.mark.slow
@pytest.mark.xdist_group("make-run")
def test_scale_and_rolling_restarts_under_load_fail_no_call(tmp_path: Path, jwt_keys: KeyPair) -> None:
    env, _ = launcher_env(tmp_path, jwt_keys)
    control_file = tmp_path / "control.json"
    topology = tmp_path / "one-each.toml"  # the launcher starts what its topology file says
    topology.write_text(ONE_EACH)
    env.update(
        MESH_CONTROL_FILE=str(control_file), MESH_TOPOLOGY=str(topology), GATEWAY_RATE_LIMIT_PER_SECOND="0"
    )
    launcher = subprocess.Popen(
        [sys.executable, "-m", "services.launcher"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # a failed start's traceback shows in the assertion
        text=True,
    )
    output = Output(launcher)
    started: list[int] = []
    try:
        output.until(re.escape(READY_LINE), timeout=120)
        matches = [m for m in map(STARTED.match, output.lines) if m is not None]
        started = [int(m[3]) for m in matches]
        assert Counter(m[1] for m in matches if m[1] in SERVICES) == dict.fromkeys(SERVICES, 1)
        assert control_file.stat().st_mode & 0o777 == 0o600
        consul, gateway = env["CONSUL_HTTP_ADDR"], int(env["GATEWAY_PORT"])

        signup = {
            "email": "fleet@example.com",
            "password": "correct-horse-9",
            "displayName": "Fleet",
            "requestId": "signup-fleet",
        }
        gateway_call(gateway, "POST", "/v1/users", signup)
        login = {"email": "fleet@example.com", "password": "correct-horse-9"}
        token = str(gateway_call(gateway, "POST", "/v1/users:login", login)["accessToken"])
        reads = [("/v1/products?pageSize=3", {}), ("/v1/orders", {"Authorization": f"Bearer {token}"})]

        with Load(gateway, reads) as load:
            wait_passing_counts(consul, {"inventory": 1, "payment": 1}, within=30)
            scaled = mesh_command(control_file, "scale", "inventory", "3")
            assert scaled.returncode == 0, scaled.stderr
            assert "inventory: 3 instance(s)" in scaled.stdout
            wait_passing_counts(consul, {"inventory": 3}, within=30)
            listed = mesh_command(control_file, "instances")
            assert listed.returncode == 0 and listed.stdout.count("inventory ") == 3, listed.stdout

            down = mesh_command(control_file, "scale", "inventory", "1")
            assert down.returncode == 0, down.stderr
            assert down.stdout.count("drained and stopped (removed)") == 2, down.stdout
            wait_passing_counts(consul, {"inventory": 1}, within=30)

            for service in ("inventory", "order"):  # each alone now: restarted with a companion
                before = load.calls()
                restarted = mesh_command(control_file, "restart", service)
                assert restarted.returncode == 0, restarted.stderr
                assert f"{service}: rolling restart done" in restarted.stdout
                assert "SERVING again (1 of 1 restarted)" in restarted.stdout
                wait_passing_counts(consul, {service: 1}, within=30)
                assert load.calls() > before  # the clients kept calling across it

            busy = mesh_command(control_file, "scale", "nosuch", "2")
            assert busy.returncode == 1 and "unknown service 'nosuch'" in busy.stderr

        print(f"\nthrough the gateway: {dict(load.statuses)}")  # shown with -s
        assert load.failures == [], load.failures
        assert set(load.statuses) == {200} and load.calls() > 100
        assert launcher.poll() is None
        assert [line for line in output.lines if "giving up" in line or "exited (" in line] == []
    finally:
        stop_launcher(launcher, signal.SIGTERM)
    assert not control_file.exists()  # the launcher takes its control file with it
    assert [pid for pid in started if alive(pid)] == []


def test_make_run_refuses_a_multi_host_topology_naming_it(tmp_path: Path, jwt_keys: KeyPair) -> None:
    env, _ = launcher_env(tmp_path, jwt_keys)
    env["MESH_TOPOLOGY"] = "deploy/cluster.toml"
    refused = subprocess.run(
        [sys.executable, "-m", "services.launcher"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert "cannot start: deploy/cluster.toml places the shop on 7 hosts" in refused.stderr
    assert "starting the shop" not in refused.stdout  # refused before anything started


def test_make_run_refuses_a_broken_topology_naming_the_key(tmp_path: Path, jwt_keys: KeyPair) -> None:
    env, _ = launcher_env(tmp_path, jwt_keys)
    broken = tmp_path / "broken.toml"
    broken.write_text(ONE_EACH.replace("order = { local = 1 }", "order = { elsewhere = 1 }"))
    env["MESH_TOPOLOGY"] = str(broken)
    refused = subprocess.run(
        [sys.executable, "-m", "services.launcher"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert "services.order: host 'elsewhere' is not under [hosts]" in refused.stderr, refused.stderr
