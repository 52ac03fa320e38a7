"""Real Consul agents and real echo-server processes for discovery tests.

Each test that asks for ``consul`` gets its own dev agent on free loopback ports, started
from the project-local binary (installed by tools/install-consul.sh when missing), ready
when it has a leader and answers the catalog (polled, never slept on), and killed by its
PID afterwards. Tests therefore run side by side under pytest-xdist and never rely on an
agent left running.

Echo servers run plaintext (``MESH_INSECURE=1``) unless a test asks ``start_echo(mtls=True)``:
then each takes the certificate of its name from the test's agent and serves mTLS, and its
readiness is polled on its plaintext health-only port (the secure port refuses plaintext).
Such a test calls them with the ``tester`` identity, which an intention allows to call echo.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh.connect.settings import SecuritySettings
from mesh.connect.setup import ConnectedWorkload, connect_workload
from mesh.health import wait_serving
from mesh.registry.dev_agent import ConsulDevAgent, find_consul
from tests.support.connect import set_intention
from tests.support.processes import ROOT, free_port
from tests.support.waiting import wait_until as wait_until  # re-exported for the tests here

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
    """One echo-server process (see echo_server.py), addressed by its port.

    ``health_port`` is its plaintext health-only listener under mTLS (None: plaintext, where
    health is served on ``port`` itself).
    """

    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    health_port: int | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def health_target(self) -> str:
        return f"127.0.0.1:{self.health_port or self.port}"

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
            wait_serving(self.health_target, timeout, self.process)
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
    """Start echo servers registered in the test's agent; all are killed afterwards.

    Plaintext by default; ``mtls=True`` serves mTLS with the health-only listener on
    ``health_port`` (a free port when 0; a restart passes the old one to keep it).
    """
    started: list[EchoProcess] = []

    def start(
        name: str = "echo",
        *,
        port: int = 0,
        delay_ms: int = 0,
        mtls: bool = False,
        health_port: int = 0,
        **extra: str,
    ) -> EchoProcess:
        port = port or free_port()
        health_port = (health_port or free_port()) if mtls else 0
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OTEL_", "CONSUL_"))}
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "MESH_PORT": str(port),
                "MESH_GRACE_SECONDS": "5",
                "MESH_INSECURE": "0" if mtls else "1",
                "CONSUL_HTTP_ADDR": consul.http_addr,
                "ECHO_NAME": name,
                "ECHO_DELAY_MS": str(delay_ms),
            }
        )
        if mtls:
            env["MESH_HEALTH_PORT"] = str(health_port)
        env.update(extra)
        process = EchoProcess(port, env, tmp_path / f"echo-{port}.log", health_port=health_port or None)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.kill()


@pytest.fixture
async def tester(consul: ConsulAgent) -> AsyncIterator[ConnectedWorkload]:
    """The identity a test calls mTLS echo servers with: ``tester``, allowed to call ``echo``."""
    set_intention(consul, "tester", "echo", "allow")
    workload = await connect_workload("tester", consul.http_addr, SecuritySettings())
    assert workload is not None
    try:
        yield workload
    finally:
        await workload.close()


async def wait_passing(consul: ConsulAgent, name: str, targets: set[str], within: float = 15.0) -> None:
    """Wait until exactly ``targets`` are the passing instances of ``name`` in Consul.

    Each question goes to the agent from a thread: a slow answer must not stall the event
    loop, where a test's load keeps its rate while it waits.
    """
    started = time.monotonic()
    while True:
        current = {f"{s['Address']}:{s['Port']}" for s in await asyncio.to_thread(consul.passing, name)}
        if current == targets:
            return
        if time.monotonic() - started > within:
            pytest.fail(f"not within {within}s: {name} passing == {sorted(targets)} (last {sorted(current)})")
        await asyncio.sleep(0.05)
