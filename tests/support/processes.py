"""Real service processes for integration tests: started on free ports, ready by health.

A process is ready when grpc.health.v1 says SERVING (polled, never slept on), and it is
stopped by its own PID only. Its stderr (JSON logs) is kept in a file so a failing test can
show what the service said.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mesh.health import wait_serving

ROOT = Path(__file__).resolve().parents[2]
SERVICE_NAMES = {
    "user": "shop.user.v1.UserService",
    "order": "shop.order.v1.OrderService",
    "payment": "shop.payment.v1.PaymentService",
    "inventory": "shop.inventory.v1.InventoryService",
    "shipping": "shop.shipping.v1.ShippingService",
}


# Test servers take ports below the kernel's ephemeral range (32768-60999 here), one slice per
# xdist worker, handed out in turn: a port from bind(0) can be handed to the other worker too,
# or taken by any outgoing connection, between the probe and the server's own bind.
PORT_FLOOR, SLICE = 10_000, 5_000
_RESERVED = {15672, 25672}  # RabbitMQ's management and distribution ports
_cursor = itertools.count(random.randrange(SLICE))


def _worker_slice() -> int:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    return int(worker) % 4 if worker.isdigit() else 0


def free_port() -> int:
    """A TCP port on 127.0.0.1, free now and not handed out to another test recently."""
    base = PORT_FLOOR + _worker_slice() * SLICE
    for _ in range(SLICE):
        port = base + next(_cursor) % SLICE
        if port in _RESERVED:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {base}-{base + SLICE - 1}")


@dataclass
class ServiceProcess:
    """One running ``python -m services.<name>`` process."""

    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    _log: object = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def health_address(self) -> str:
        """Where readiness is asked: under mTLS the plaintext health-only port (MESH_HEALTH_PORT)."""
        health_port = self.env.get("MESH_HEALTH_PORT", "")
        if self.env.get("MESH_INSECURE") != "1" and health_port not in ("", "0"):
            return f"127.0.0.1:{health_port}"
        return self.address

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self._log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # Asked by service name: another test's server on a reused port does not count.
            wait_serving(self.health_address, timeout, self.process, service=SERVICE_NAMES[self.name])
        except Exception as error:
            self.kill()
            raise RuntimeError(f"{self.name} did not start: {error}\n{self.logs()}") from error
        return self

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code (SIGKILL after timeout)."""
        self.signal(signal.SIGTERM)
        return self.stopped(timeout)

    def stopped(self, timeout: float = 15.0) -> int:
        """Wait for the exit a signal asked for; the exit code (SIGKILL after timeout)."""
        if self.process is None:
            return 0
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def stop_all(processes: Iterable[ServiceProcess], timeout: float = 15.0) -> None:
    """SIGTERM every process, then wait for each (SIGKILL past ``timeout``).

    Their drains and last span exports overlap instead of adding up. One signal each: a
    second SIGTERM makes a service exit at once, skipping its drain.
    """
    live = list(processes)
    for process in live:
        process.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in live:
        process.stopped(max(0.1, deadline - time.monotonic()))


def service_env(base: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """The environment for a service process: the test's settings over a clean copy of ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OTEL_", "SHOP_"))}
    env.update(base)
    env.update(overrides)
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("MESH_GRACE_SECONDS", "5")
    # Off unless a test asks for the bus (tests/support/bus.py): a service test that is not
    # about events must leave no exchange, queue or message on the machine's broker.
    env.setdefault("SHOP_AMQP_URL", "none")
    # Plaintext, callers named by their x-mesh-peer claim, unless a test asks for mTLS
    # (MESH_INSECURE=0 and a Consul agent with Connect): the mTLS path has its own tests.
    env.setdefault("MESH_INSECURE", "1")
    return env
