"""`make run` survives a dead instance: SIGKILL an inventory or order process, the launcher restarts it.

The launcher runs as a real process on free ports (as in test_make_run.py). The test kills
only a process that launcher started (its PID is printed, and /proc confirms the parent),
checks that the launcher says what happened, that the instance serves again on the same
port, that nothing else was stopped, and that SIGTERM then stops everything.

Its Consul agent enforces ACLs: each child holds its own identity's token file and no other
token (/proc shows their environments), and a killed agent comes back with the shop's
tokens and intentions, every instance passing again.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import IO

import pytest

from mesh.health import wait_serving
from services.common.settings import DEFAULT_PORTS
from services.launcher import TOKEN_DIR
from tests.support.processes import ROOT, free_port
from tests.support.tokens import KeyPair

READY_LINE = "Ctrl-C stops everything."
# "  inventory  127.0.0.1:50054  pid 4242  SERVING  health 127.0.0.1:40001" (health under mTLS),
# "  consul     127.0.0.1:8500  pid 4241  READY  (ACLs on, ...)".
STARTED = re.compile(
    r"^\s+(\w+)\s+127\.0\.0\.1:(\d+)\s+pid (\d+)\s+(SERVING|READY)(?:\s+health 127\.0\.0\.1:(\d+)|\s+\(.*\))?$"
)


class Output:
    """The launcher's stdout, read on one thread; ``until`` waits for a line matching a pattern."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self.process = process
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self._queue.put(line)

    def until(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None and self._queue.empty():
                    break
                continue
            self.lines.append(line.rstrip("\n"))
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(
            f"launcher (exit {self.process.poll()}) never printed {pattern!r}:\n" + "\n".join(self.lines)
        )


def parent_of(pid: int) -> int:
    """The parent PID from /proc (field 4 of stat; the name in field 2 may hold spaces)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    """Running and not a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def launcher_env(tmp_path: Path, jwt_keys: KeyPair) -> tuple[dict[str, str], dict[str, int]]:
    ports = {name: free_port() for name in DEFAULT_PORTS}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "SHOP_"))}
    env.update({f"{name.upper()}_PORT": str(port) for name, port in ports.items()})
    env["GATEWAY_PORT"] = str(free_port())
    env["MESH_XDS_PORT"] = str(free_port())
    env["MESH_DASHBOARD_PORT"] = str(free_port())
    env["MESH_XDS_BOOTSTRAP"] = str(tmp_path / "xds-bootstrap.json")
    env["CONSUL_HTTP_ADDR"] = f"127.0.0.1:{free_port()}"  # nothing there: the launcher starts its own agent
    env.update(
        MESH_DATA_DIR=str(tmp_path / "data"),
        MESH_JWT_PRIVATE_KEY_FILE=str(jwt_keys.private),
        MESH_JWT_PUBLIC_KEY_FILE=str(jwt_keys.public),
        MESH_GRACE_SECONDS="2",
        SHOP_AMQP_URL="none",  # events stay in the outbox: this test is about processes, not the bus
        # An operator's token in the launcher's environment: no child may inherit it.
        CONSUL_HTTP_TOKEN=OPERATOR_TOKEN,
        PYTHONUNBUFFERED="1",
    )
    return env, ports


OPERATOR_TOKEN = "an-operators-token-no-child-may-hold"


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode(errors="replace").split("=", 1) for entry in raw if b"=" in entry)


def consul_get(consul: str, path: str, token: str) -> object:
    request = urllib.request.Request(f"http://{consul}{path}", headers={"X-Consul-Token": token})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def assert_each_child_holds_its_own_token(started: dict[tuple[str, int], int], consul: str) -> None:
    """Each service and the gateway: CONSUL_HTTP_TOKEN_FILE is its identity's, and no other token."""
    for (name, _), pid in started.items():
        environ = environ_of(pid)
        assert "CONSUL_HTTP_TOKEN" not in environ, name
        if name == "consul":  # the agent's tokens come from its config
            assert "CONSUL_HTTP_TOKEN_FILE" not in environ
            continue
        token_file = Path(environ["CONSUL_HTTP_TOKEN_FILE"])
        assert token_file == TOKEN_DIR / name
        token = consul_get(consul, "/v1/acl/token/self", token_file.read_text().strip())
        assert isinstance(token, dict)
        assert [policy["Name"] for policy in token["Policies"]] == [f"mesh-identity-{name}"]  # not a master


def passing_instances(consul: str, token: str) -> dict[str, int]:
    names = ("user", "inventory", "payment", "shipping", "order", "gateway")
    counts = {}
    for name in names:
        rows = consul_get(consul, f"/v1/health/service/{name}?passing=1", token)
        assert isinstance(rows, list)
        counts[name] = len(rows)
    return counts


def kill_and_see_it_restarted(
    launcher: subprocess.Popen[str], output: Output, port: int, pid: int, health_port: int | None
) -> int:
    """SIGKILL the launcher's child ``pid``; see the launcher restart it on ``port``; its new PID.

    ``health_port``: where it answers grpc.health.v1 (None: not a gRPC server, the Consul agent).
    """
    assert parent_of(pid) == launcher.pid  # only ever a process this test's launcher started
    os.kill(pid, signal.SIGKILL)
    died = output.until(rf"127\.0\.0\.1:{port}\s+pid {pid}\s+exited .*", timeout=10)
    assert "exited (killed by SIGKILL); restarting in 1 s" in died[0]
    restarted = output.until(rf"127\.0\.0\.1:{port}\s+pid (\d+)\s+restarted \(restart 1\)", timeout=10)
    new_pid = int(restarted[1])
    assert new_pid != pid and parent_of(new_pid) == launcher.pid
    output.until(rf"127\.0\.0\.1:{port}\s+pid {new_pid}\s+SERVING again", timeout=60)
    if health_port is not None:
        wait_serving(f"127.0.0.1:{health_port}", timeout=10)  # the same port answers grpc health again
    return new_pid


@pytest.mark.xdist_group("make-run")
def test_launcher_restarts_a_killed_instance_and_keeps_the_rest_serving(
    tmp_path: Path, jwt_keys: KeyPair
) -> None:
    env, ports = launcher_env(tmp_path, jwt_keys)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "services.launcher"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    output = Output(launcher)
    try:
        output.until(re.escape(READY_LINE), timeout=120)
        matches = [m for m in map(STARTED.match, output.lines) if m is not None]
        started = {(m[1], int(m[2])): int(m[3]) for m in matches}
        health = {int(m[2]): int(m[5] or m[2]) for m in matches}  # under mTLS, the health-only port
        consul = env["CONSUL_HTTP_ADDR"]
        assert_each_child_holds_its_own_token(started, consul)
        inventory = sorted(port for name, port in started if name == "inventory")
        assert len(inventory) == 2, output.lines
        port = inventory[-1]  # the second instance, on a port of the launcher's choosing
        victim = started["inventory", port]
        others = {key: pid for key, pid in started.items() if pid != victim}
        assert {name for name, _ in others} >= {"consul", "user", "inventory", "payment", "order", "gateway"}

        new_pid = kill_and_see_it_restarted(launcher, output, port, victim, health[port])

        assert launcher.poll() is None
        assert [key for key, pid in others.items() if not alive(pid)] == []  # nothing else was stopped

        # The order service (the saga's orchestrator) comes back the same way.
        order_port = ports["order"]
        order_pid = others.pop(("order", order_port))
        new_order_pid = kill_and_see_it_restarted(launcher, output, order_port, order_pid, health[order_port])
        assert launcher.poll() is None
        assert [key for key, pid in others.items() if not alive(pid)] == []
        assert alive(new_pid)
        assert not any("stopped unexpectedly" in line or "stopping" in line for line in output.lines)

        # The Consul agent comes back with the shop's tokens (the same secrets the children hold)
        # and intentions; each instance's registrar then registers it again.
        consul_port = int(consul.rsplit(":", 1)[1])
        agent_pid = others.pop(("consul", consul_port))
        new_agent_pid = kill_and_see_it_restarted(launcher, output, consul_port, agent_pid, None)
        cli = (TOKEN_DIR / "cli").read_text().strip()
        expected = {"user": 1, "inventory": 2, "payment": 2, "shipping": 1, "order": 1, "gateway": 1}
        deadline = time.monotonic() + 60
        while passing_instances(consul, cli) != expected and time.monotonic() < deadline:
            time.sleep(0.2)  # poll interval
        assert passing_instances(consul, cli) == expected
        started[("consul", consul_port)] = new_agent_pid
        assert [key for key, pid in others.items() if not alive(pid)] == []

        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(30) == 0
        print("\n".join(output.lines[-8:]))  # shown with -s: what a person sees
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGTERM)  # it stops its children; SIGKILL would orphan none either
            try:
                launcher.wait(30)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
    every = [*started.values(), new_pid, new_order_pid]
    assert [pid for pid in every if alive(pid)] == []
    for listening in [*ports.values(), int(env["GATEWAY_PORT"])]:
        probe = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{listening}"], capture_output=True)
        assert probe.returncode != 0, f"port {listening} still answers"


@pytest.mark.xdist_group("make-run")
def test_a_killed_launcher_leaves_nothing_running(tmp_path: Path, jwt_keys: KeyPair) -> None:
    """SIGKILL of the launcher itself: every child it started, Consul's agent included, goes.

    The services were tied to the launcher's life; the Consul agent was not, and outlived it.
    """
    env, _ = launcher_env(tmp_path, jwt_keys)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "services.launcher"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    output = Output(launcher)
    started: dict[tuple[str, int], int] = {}
    try:
        output.until(re.escape(READY_LINE), timeout=120)
        started = {(m[1], int(m[2])): int(m[3]) for m in map(STARTED.match, output.lines) if m is not None}
        assert "consul" in {name for name, _ in started}, output.lines
        assert all(parent_of(pid) == launcher.pid for pid in started.values())
    finally:
        launcher.kill()
        launcher.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(pid) for pid in started.values()):
        time.sleep(0.1)  # polling the children's exit, not standing in for readiness
    left = {key: pid for key, pid in started.items() if alive(pid)}
    for pid in left.values():
        os.kill(pid, signal.SIGKILL)  # only this test's launcher's children; never left behind
    assert left == {}
