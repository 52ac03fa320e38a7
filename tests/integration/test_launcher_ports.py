"""A port taken between the launcher's probe and the child's bind costs a restart, not the shop.

The launcher picks free ports for second instances and health listeners, and the child binds
them a second or so later; any other process can take one in between (CI saw an inventory's
health port go so, and `make run` never came up). Here the port is taken on purpose: a real
service process on a held port exits with the status that says so, and the launcher starts
the instance again on a port chosen afresh. The Consul dev agent, whose ports come from the
same range, does the same for the ports it picked.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh.health import wait_serving
from mesh.registry import dev_agent
from mesh.registry.dev_agent import ConsulDevAgent, PortAllocator, find_consul, free_ports
from mesh.server.runtime import EXIT_PORT_UNAVAILABLE
from services.launcher import LOG_DIR, Child, LaunchError, Mesh, ready_or_again, start_instance
from tests.support.processes import ROOT, free_port, service_env
from tests.support.tokens import KeyPair


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another process has bound and listens on for the whole test."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        yield holder.getsockname()[1]


@dataclass
class TakenFirst(PortAllocator):
    """The launcher's allocator, whose first pick is ``taken``: what a race lost looks like."""

    taken: int = 0

    def take(self) -> int:
        if self.taken not in self.given:
            self.given.add(self.taken)
            return self.taken
        return super().take()


def inventory_env(tmp_path: Path, jwt_keys: KeyPair) -> dict[str, str]:
    return service_env({"MESH_DATA_DIR": str(tmp_path / "data"), **jwt_keys.env("inventory")})


def test_a_service_whose_port_is_taken_exits_with_the_status_that_says_so(
    tmp_path: Path, jwt_keys: KeyPair, held_port: int
) -> None:
    env = dict(inventory_env(tmp_path, jwt_keys), MESH_PORT=str(held_port))
    done = subprocess.run(
        [sys.executable, "-m", "services.inventory"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_PORT_UNAVAILABLE, done.stdout + done.stderr
    assert f"cannot bind 127.0.0.1:{held_port}" in done.stdout + done.stderr


def test_the_launcher_starts_an_instance_again_when_a_port_it_chose_was_taken(
    tmp_path: Path, jwt_keys: KeyPair, held_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    mesh = Mesh("127.0.0.1:1", "", ports=TakenFirst(taken=held_port))
    first = start_instance(inventory_env(tmp_path, jwt_keys), mesh, "inventory", None, mtls=False)
    started = [first]
    try:
        assert first.port == held_port
        serving = ready_or_again(first)
        started.append(serving)
        assert first.process.wait(30) == EXIT_PORT_UNAVAILABLE
        assert serving is not first and serving.port not in (held_port, 0)
        wait_serving(f"127.0.0.1:{serving.port}", timeout=5, process=serving.process)
        assert "cannot bind" in (LOG_DIR / f"inventory-{held_port}.log").read_text()
        said = capsys.readouterr().out
        assert f"127.0.0.1:{held_port} or its health port was taken before it bound it" in said
    finally:
        for child in started:
            child.process.kill()
            child.process.wait()


def test_the_launcher_gives_up_on_a_port_the_operator_set_and_says_which(
    tmp_path: Path, jwt_keys: KeyPair, held_port: int
) -> None:
    mesh = Mesh("127.0.0.1:1", "")
    first = start_instance(inventory_env(tmp_path, jwt_keys), mesh, "inventory", held_port, mtls=False)
    with pytest.raises(LaunchError, match=f"cannot bind 127.0.0.1:{held_port}"):
        ready_or_again(first)
    assert first.process.poll() == EXIT_PORT_UNAVAILABLE


def test_a_child_that_failed_for_another_reason_is_not_started_again(tmp_path: Path) -> None:
    starts: list[Child] = []

    def failing() -> Child:
        process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])

        def ready(process: subprocess.Popen[bytes]) -> None:
            process.wait(30)
            raise LaunchError("exited with 1")

        child = Child("inventory", 1, process, lambda: process, ready, again=failing)
        starts.append(child)
        return child

    with pytest.raises(LaunchError, match="exited with 1"):
        ready_or_again(failing())
    assert len(starts) == 1


def test_an_agent_whose_picked_port_was_taken_starts_again_on_fresh_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Another process can take a picked port before Consul binds it (as a launcher's child did in CI)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_ports(1)[0]))  # in the dev agent's range, unlike held_port
        holder.listen()
        taken = holder.getsockname()[1]
        real_free_ports = dev_agent.free_ports
        calls: list[int] = []

        def first_includes_taken(count: int, exclude: Collection[int] = ()) -> list[int]:
            calls.append(count)
            fresh = real_free_ports(count, exclude={*exclude, taken})
            return [taken, *fresh[1:]] if len(calls) == 1 else fresh

        monkeypatch.setattr(dev_agent, "free_ports", first_includes_taken)
        agent = ConsulDevAgent(find_consul(ROOT), tmp_path / "consul.log")
        try:
            agent.start()
            assert len(calls) == 2
            assert taken not in agent.ports.values()
            assert agent.get("/v1/status/leader")
            assert "address already in use" in agent.logs()
        finally:
            agent.stop()
