"""Real Consul agents and real echo-server processes for discovery tests.

Each test that asks for ``consul`` gets its own dev agent on free loopback ports, started
from the project-local binary (installed by tools/install-consul.sh when missing), ready
when it has a leader and answers the catalog (polled, never slept on), and killed by its
PID afterwards. Tests therefore run side by side under pytest-xdist and never rely on an
agent left running.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh.health import wait_serving
from mesh.registry.dev_agent import ConsulDevAgent, find_consul
from tests.support.processes import ROOT, free_port

ConsulAgent = ConsulDevAgent


def consul_binary() -> str:
    """The consul binary: on PATH, in .tools/bin, or installed there now."""
    try:
        return find_consul(ROOT)
    except RuntimeError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def consul_path() -> str:
    return consul_binary()


@pytest.fixture
def consul(consul_path: str, tmp_path: Path) -> Iterator[ConsulAgent]:
    agent = ConsulAgent(consul_path, tmp_path / "consul.log").start()
    try:
        yield agent
    finally:
        agent.stop()


@dataclass
class EchoProcess:
    """One echo-server process (see echo_server.py), addressed by its port."""

    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def label(self) -> bytes:
        return str(self.port).encode()

    def start(self, timeout: float = 20.0) -> EchoProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.discovery.echo_server"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_serving(self.target, timeout, self.process)
        except Exception as error:
            self.kill()
            raise RuntimeError(f"echo server did not start: {error}\n{self.logs()}") from error
        return self

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def terminate(self, timeout: float = 15.0) -> int:
        if self.process is None:
            return 0
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


StartEcho = Callable[..., EchoProcess]


@pytest.fixture
def start_echo(consul: ConsulAgent, tmp_path: Path) -> Iterator[StartEcho]:
    """Start echo servers registered in the test's agent; all are killed afterwards."""
    started: list[EchoProcess] = []

    def start(name: str = "echo", *, port: int = 0, delay_ms: int = 0, **extra: str) -> EchoProcess:
        port = port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OTEL_", "CONSUL_"))}
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "MESH_PORT": str(port),
                "MESH_GRACE_SECONDS": "5",
                "CONSUL_HTTP_ADDR": consul.http_addr,
                "ECHO_NAME": name,
                "ECHO_DELAY_MS": str(delay_ms),
                **extra,
            }
        )
        process = EchoProcess(port, env, tmp_path / f"echo-{port}.log")
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.kill()


async def wait_until(predicate: Callable[[], bool], within: float, what: str, step: float = 0.02) -> float:
    """Poll ``predicate`` until true; returns the seconds it took, fails the test after ``within``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(step)
    return time.monotonic() - started


async def wait_passing(consul: ConsulAgent, name: str, targets: set[str], within: float = 15.0) -> None:
    """Wait until exactly ``targets`` are the passing instances of ``name`` in Consul."""

    def current() -> set[str]:
        return {f"{s['Address']}:{s['Port']}" for s in consul.passing(name)}

    await wait_until(lambda: current() == targets, within, f"{name} passing == {sorted(targets)}", 0.05)
