"""Real processes for the gateway tests: the five services once for the package, and gateways.

The services start in parallel (each ready when grpc.health says SERVING); a gateway process
is ready when its /readyz answers 200 (routes built, endpoints known for every upstream). Nothing sleeps for readiness; everything is stopped by
its own PID.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import DEFAULT_UPSTREAMS
from tests.support.processes import ROOT, ServiceProcess, free_port, service_env, stop_all
from tests.support.tokens import KeyPair

SERVICES = tuple(DEFAULT_UPSTREAMS)


@dataclass
class Shop:
    processes: dict[str, ServiceProcess]
    keys: KeyPair

    def address(self, name: str) -> str:
        return self.processes[name].address

    def gateway_env(self) -> dict[str, str]:
        env = {f"GATEWAY_UPSTREAM_{name.upper()}": self.address(name) for name in self.processes}
        env.update(self.keys.env("gateway"))  # the user key to verify; plaintext mesh mode
        return env


def start_shop(directory: Path, keys: KeyPair) -> Shop:
    ports = {name: free_port() for name in SERVICES}
    upstreams = {f"MESH_UPSTREAM_{name.upper()}": f"127.0.0.1:{port}" for name, port in ports.items()}
    processes = {}
    for name, port in ports.items():
        base = {
            "MESH_PORT": str(port),
            "MESH_DATA_DIR": str(directory / "data"),
            **keys.env(name),
            **upstreams,
        }
        extra = {"INVENTORY_SEED_DEMO": "1"} if name == "inventory" else {}
        processes[name] = ServiceProcess(name, port, service_env(base, **extra), directory / f"{name}.log")
    with ThreadPoolExecutor(len(processes)) as pool:
        started = [pool.submit(process.start) for process in processes.values()]
        errors = [future.exception() for future in started]
    shop = Shop(processes, keys)
    if any(errors):
        stop_shop(shop)
        raise RuntimeError(f"the shop did not start: {[e for e in errors if e]}")
    return shop


def stop_shop(shop: Shop) -> None:
    stop_all(shop.processes.values())


@pytest.fixture(scope="package")
def shop(tmp_path_factory: pytest.TempPathFactory, jwt_keys: KeyPair) -> Iterator[Shop]:
    started = start_shop(tmp_path_factory.mktemp("shop"), jwt_keys)
    yield started
    stop_shop(started)


@dataclass
class GatewayProcess:
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    metrics_port: int = 0  # the gateway's /metrics listener (GATEWAY_METRICS_PORT)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        return http_request(self.port, method, path, body, token, headers, raw)

    def json(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        status, _, data = self.request(method, path, body, token)
        return status, json.loads(data)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def http_request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = dict(headers or {})
    payload = raw
    if body is not None:
        payload = json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def start_gateway(directory: Path, env: dict[str, str], timeout: float = 20.0) -> GatewayProcess:
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "GATEWAY_", "OTEL_"))}
    full.update(env)
    full.setdefault("GATEWAY_METRICS_PORT", str(free_port()))
    full.setdefault("MESH_INSECURE", "1")  # as the services it calls (tests/support/processes.py)
    full.update(GATEWAY_PORT=str(port), PYTHONPATH=str(ROOT))
    log_path = directory / f"gateway-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - kept open for the process's life
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway"], cwd=ROOT, env=full, stdout=log, stderr=subprocess.STDOUT
    )
    gateway = GatewayProcess(port, process, log_path, full, int(full["GATEWAY_METRICS_PORT"]))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{gateway.logs()}")
        try:
            if http_request(port, "GET", "/readyz")[0] == 200:
                return gateway
        except OSError:
            pass
        time.sleep(0.02)  # poll interval while the port opens and endpoints are discovered
    gateway.stop()
    raise TimeoutError(f"gateway not ready after {timeout}s:\n{gateway.logs()}")


@pytest.fixture(scope="package")
def gateway(shop: Shop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = shop.gateway_env()
    env.update(GATEWAY_RATE_LIMIT_PER_SECOND="100000", GATEWAY_RATE_LIMIT_BURST="100000")
    started = start_gateway(tmp_path_factory.mktemp("gateway"), env)
    yield started
    started.stop()


def register(gateway: GatewayProcess, email: str, password: str = "correct-horse-9") -> tuple[str, str]:
    """Register and log in through the gateway; returns (user_id, token)."""
    status, user = gateway.json(
        "POST", "/v1/users", {"email": email, "password": password, "displayName": email.split("@")[0]}
    )
    assert status == 200, user
    status, login = gateway.json("POST", "/v1/users:login", {"email": email, "password": password})
    assert status == 200, login
    assert login["userId"] == user["userId"] and login["tokenType"] == "Bearer"
    return user["userId"], login["accessToken"]
