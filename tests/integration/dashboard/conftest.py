"""A real mesh for the dashboard's browser test: Consul, the shop, the gateway, the dashboard, chromium.

What runs, all on 127.0.0.1 and stopped by PID: a Consul dev agent (no ACLs); the dashboard
process (``python -m mesh.dashboard``), started first so its OTLP port is known; the five shop
services with inventory twice (one instance is frozen by the test), registered in that agent
with their /metrics port in their meta and their spans exported to the dashboard
(``OTEL_EXPORTER_OTLP_ENDPOINT``, a short batch delay); the gateway, registered too; and a
headless chromium, Debian's (tools/ensure-chromium.sh installs it when missing), driven by
Playwright with ``executable_path`` (Playwright's own browser download is never used).

Screenshots go to a temporary directory, or to ``$DASHBOARD_SCREENSHOTS_DIR`` when set
(``DASHBOARD_SCREENSHOTS_DIR=docs/img`` refreshes the ones docs/dashboard.md shows), so a plain
test run leaves the work tree alone.

Everything is package-scoped: starting the shop costs most of the test's time, and the
tests read one running mesh in order (load, then a frozen instance, then its traces).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mesh.registry.dev_agent import ConsulDevAgent, find_consul
from tests.integration.gateway.conftest import GatewayProcess, http_request, start_gateway
from tests.support.processes import ROOT, ServiceProcess, free_port, service_env
from tests.support.tokens import KeyPair

SERVICES = ("user", "inventory", "payment", "shipping", "order")
SCREENSHOTS_VARIABLE = "DASHBOARD_SCREENSHOTS_DIR"  # docs/img to refresh the docs' screenshots
READY_PREFIX = "dashboard  http://"


def wait_until(check: Any, within: float, what: str) -> Any:
    """Poll ``check`` until truthy; its value. Blocking on purpose: Playwright's sync API keeps an
    event loop running in this thread, so tests/support/waiting.py's asyncio.run cannot be used."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)  # poll interval of the DOM and Consul reads
    raise AssertionError(f"not within {within}s: {what} (last: {last!r})")


def chromium_path() -> str:
    """Debian's chromium, installed now when missing (as CI, root on a fresh machine, needs)."""
    found = subprocess.run(
        [str(ROOT / "tools" / "ensure-chromium.sh")], capture_output=True, text=True, check=False
    )
    if found.returncode != 0:
        pytest.fail(f"tools/ensure-chromium.sh failed:\n{found.stderr}")
    return found.stdout.strip().splitlines()[-1]


@dataclass
class DashboardProcess:
    process: subprocess.Popen[str]
    url: str
    otlp_port: int
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_dashboard(directory: Path, consul: str, *options: str, timeout: float = 20.0) -> DashboardProcess:
    """``python -m mesh.dashboard`` on free ports; ready when it prints where it serves."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OTEL_", "CONSUL_"))}
    env.update(PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    log_path = directory / "dashboard.log"
    command = [sys.executable, "-m", "mesh.dashboard", "--consul", consul, "--port", "0", "--otlp-port", "0"]
    # Four samples a second and a short scrape timeout: a frozen instance's /metrics must not
    # hold the sample that reports its critical check for long (start_services says how soon
    # Consul gives its verdict); the test wants it on the page within 3 s.
    command += ["--interval", "0.25", "--scrape-timeout", "0.3", *options]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout or ()], daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        if line.startswith(READY_PREFIX):
            # "dashboard  http://127.0.0.1:PORT/  (OTLP 127.0.0.1:PORT)"
            url = line.split()[1]
            otlp_port = int(line.rsplit(":", 1)[1].rstrip(")\n"))
            return DashboardProcess(process, url, otlp_port, log_path)
    process.kill()
    process.wait()
    raise RuntimeError(f"the dashboard did not start:\n{log_path.read_text(errors='replace')}")


@dataclass
class Mesh:
    consul: ConsulDevAgent
    dashboard: DashboardProcess
    services: dict[str, ServiceProcess]
    frozen_candidate: ServiceProcess  # the second inventory instance
    gateway: GatewayProcess
    stopped: list[Any] = field(default_factory=list)

    def instance_id(self, process: ServiceProcess) -> str:
        """Its id in Consul (mesh/registry/consul.py: name-host-port)."""
        rows = self.consul.get(f"/v1/health/service/{process.name}")
        assert isinstance(rows, list)
        for row in rows:
            if row["Service"]["Port"] == process.port:
                return str(row["Service"]["ID"])
        raise AssertionError(f"{process.name} on {process.port} is not in Consul")


def start_services(directory: Path, keys: KeyPair, consul: str, otlp_port: int) -> list[ServiceProcess]:
    data = directory / "data"
    common = {
        "CONSUL_HTTP_ADDR": consul,
        "MESH_DATA_DIR": str(data),
        "MESH_METRICS_PORT": "0",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        # Consul's check every 0.5 s with a 0.5 s timeout (the shop's are 1 s and 1 s): a frozen
        # instance is critical in Consul within ~1 s, leaving the page the rest of the 3 s even on
        # a loaded CI machine (a CI run with 0.5 s / 1 s missed the 3 s once). With the shop's
        # checks the page showed it 1.8-2.5 s after the SIGSTOP here (five runs).
        "MESH_CHECK_INTERVAL_SECONDS": "0.5",
        "MESH_CHECK_TIMEOUT_SECONDS": "0.5",
    }
    processes = []
    for name in (*SERVICES, "inventory"):
        port = free_port()
        base = {"MESH_PORT": str(port), **keys.env(name), **common}
        extra = {"INVENTORY_SEED_DEMO": "1"} if name == "inventory" else {}
        processes.append(
            ServiceProcess(name, port, service_env(base, **extra), directory / f"{name}-{port}.log")
        )
    # The first inventory seeds the catalog alone; the rest start side by side.
    first = processes[1]
    first.start()
    rest = [p for p in processes if p is not first]
    with ThreadPoolExecutor(len(rest)) as pool:
        errors = [future.exception() for future in [pool.submit(p.start) for p in rest]]
    if any(errors):
        for process in processes:
            process.kill()
        raise RuntimeError(f"the shop did not start: {[e for e in errors if e]}")
    return processes


@pytest.fixture(scope="package")
def mesh(tmp_path_factory: pytest.TempPathFactory, jwt_keys: KeyPair) -> Iterator[Mesh]:
    directory = tmp_path_factory.mktemp("dashboard-mesh")
    consul = ConsulDevAgent(find_consul(ROOT), directory / "consul.log").start()
    stack: list[Any] = [consul]
    try:
        dashboard = start_dashboard(directory, consul.http_addr)
        stack.append(dashboard)
        processes = start_services(directory, jwt_keys, consul.http_addr, dashboard.otlp_port)
        stack.extend(processes)
        env = {
            "CONSUL_HTTP_ADDR": consul.http_addr,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{dashboard.otlp_port}",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "GATEWAY_RATE_LIMIT_PER_SECOND": "100000",
            "GATEWAY_RATE_LIMIT_BURST": "100000",
            **jwt_keys.env("gateway"),
        }
        gateway = start_gateway(directory, env)
        stack.append(gateway)
        services = {p.name: p for p in processes if p.name != "inventory" or p is processes[1]}
        yield Mesh(consul, dashboard, services, processes[-1], gateway)
    finally:
        for item in reversed(stack):
            if isinstance(item, ServiceProcess):
                item.kill()
            else:
                item.stop()


class Load:
    """GET /v1/products through the gateway from a few threads until stopped; counts answers."""

    def __init__(self, gateway: GatewayProcess, threads: int = 4, pause: float = 0.02) -> None:
        self.gateway = gateway
        self.pause = pause
        self.answers: dict[int, int] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self._lock = threading.Lock()

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(35)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status = http_request(self.gateway.port, "GET", "/v1/products?pageSize=2")[0]
            except OSError:
                status = 0
            with self._lock:
                self.answers[status] = self.answers.get(status, 0) + 1
            self._stop.wait(self.pause)


class VerdictWatch:
    """Notes when one instance first reads critical in Consul and in the dashboard's view.

    So a page that is late says whose lateness it was: Consul's verdict, the dashboard's
    sample, or the page's render of it.
    """

    def __init__(self, mesh: Mesh, service: str, instance: str) -> None:
        self.mesh = mesh
        self.service = service
        self.instance = instance
        self.consul_at: float | None = None
        self.view_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> VerdictWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while (self.consul_at is None or self.view_at is None) and not self._stop.is_set():
            if self.consul_at is None and self._consul_says_critical():
                self.consul_at = time.monotonic()
            if self.view_at is None and self._view_says_critical():
                self.view_at = time.monotonic()
            self._stop.wait(0.05)

    def _consul_says_critical(self) -> bool:
        try:
            checks = self.mesh.consul.get(f"/v1/health/checks/{self.service}")
        except OSError:
            return False
        assert isinstance(checks, list)
        return any(c["ServiceID"] == self.instance and c["Status"] == "critical" for c in checks)

    def _view_says_critical(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.mesh.dashboard.url}api/view", timeout=2) as reply:
                view = json.loads(reply.read())
        except OSError:
            return False
        return any(
            instance["instance_id"] == self.instance and instance["health"] == "critical"
            for service in view["services"]
            for instance in service["instances"]
        )

    def since(self, started: float) -> str:
        """When each said critical, in seconds after ``started``."""

        def after(at: float | None) -> str:
            return "not yet" if at is None else f"after {at - started:.2f}s"

        return f"critical in Consul {after(self.consul_at)}, in the dashboard's view {after(self.view_at)}"


@pytest.fixture(scope="package")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get(SCREENSHOTS_VARIABLE, "")
    directory = (ROOT / chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture(scope="package")
def browser_page(mesh: Mesh) -> Iterator[Any]:
    import playwright.sync_api as playwright_api  # a dev dependency: missing, the test fails

    executable = chromium_path()
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            page = browser.new_page(viewport={"width": 1360, "height": 1000})
            page.goto(mesh.dashboard.url)
            yield page
        finally:
            browser.close()
