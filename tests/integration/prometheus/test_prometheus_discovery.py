"""The real Prometheus (Debian's 2.42) finds every instance through the mesh's /sd and runs the rules.

A Consul dev agent; three real mesh processes (tests/integration/prometheus/mesh_process.py),
each serving ``/metrics`` on a free port published in its Consul meta as ``metrics_port``:
two ``back`` instances, and ``front``, which calls ``back`` through a mesh channel (one call
in four fails INTERNAL). The /sd handler is served by a small aiohttp app here, as the
dashboard mounts it in production. Prometheus runs with deploy/prometheus/prometheus.yml,
its url pointed at that app and its intervals shortened to a second, on a free loopback
port with its data in the test's directory, stopped by its PID.

Asked through Prometheus' HTTP API: every instance is discovered with its service,
instance_id and node labels and is up; the recording rules give series for the services
and the front -> back edge (attributed by the owner join), and no rule fails to evaluate.
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
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from mesh.health import wait_serving
from mesh.observe.http_sd import http_sd_handler
from mesh.registry.dev_agent import ConsulDevAgent
from tests.integration.prometheus.conftest import DEPLOY, RULES, PrometheusTools
from tests.support.processes import ROOT, free_port

SECONDS = 30.0  # for everything Prometheus has to find, scrape and evaluate


@dataclass
class MeshProcess:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def instance_id(self) -> str:
        return f"{self.name}-127.0.0.1-{self.port}"  # ConsulRegistrar's id: name, host, port


@pytest.fixture
def start_process(consul_agent: ConsulDevAgent, tmp_path: Path) -> Iterator[Callable[..., MeshProcess]]:
    started: list[MeshProcess] = []

    def start(name: str, **extra: str) -> MeshProcess:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OTEL_", "CONSUL_"))}
        env |= {
            "PYTHONPATH": str(ROOT),
            "MESH_PORT": str(port),
            "MESH_GRACE_SECONDS": "1",
            "CONSUL_HTTP_ADDR": consul_agent.http_addr,
            "PROC_NAME": name,
            **extra,
        }
        log_path = tmp_path / f"{name}-{port}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.prometheus.mesh_process"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        item = MeshProcess(name, port, process, log_path)
        started.append(item)
        try:
            wait_serving(f"127.0.0.1:{port}", 30, process)
        except Exception as error:
            raise RuntimeError(f"{name} did not start: {error}\n{log_path.read_text()}") from error
        return item

    yield start
    for item in started:
        if item.process.poll() is None:
            os.kill(item.process.pid, signal.SIGKILL)
            item.process.wait()


@pytest.fixture
async def sd_url(consul_agent: ConsulDevAgent) -> AsyncIterator[str]:
    """The /sd handler on its own little app, as the dashboard serves it."""
    app = web.Application()
    app.router.add_get("/sd", http_sd_handler(consul_agent.http_addr))
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/sd"
    finally:
        await runner.cleanup()


def prometheus_config(sd_url: str, directory: Path) -> Path:
    """deploy/prometheus/prometheus.yml with the test's /sd url and one-second intervals."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(RULES / Path(name).name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    (sd,) = job["http_sd_configs"]
    sd |= {"url": sd_url, "refresh_interval": "1s"}
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def prometheus(tools: PrometheusTools, sd_url: str, tmp_path: Path) -> Iterator[str]:
    """Debian's Prometheus on a free loopback port; yields its base URL; killed by PID."""
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                tools.prometheus,
                f"--config.file={prometheus_config(sd_url, tmp_path)}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.returncode not in (0, -signal.SIGTERM):
            print(log_path.read_text())


def shipped_rule_count() -> int:
    return sum(
        len(group["rules"])
        for path in (RULES / "mesh-recording.yml", RULES / "mesh-alerts.yml")
        for group in yaml.safe_load(path.read_text())["groups"]
    )


async def api(session: aiohttp.ClientSession, base: str, path: str, **params: str) -> Any:
    try:
        async with session.get(base + path, params=params) as response:
            if response.status != 200:
                return None
            body = await response.json()
    except aiohttp.ClientError:
        return None  # not listening yet
    return body["data"] if body.get("status") == "success" else None


async def poll(what: str, check: Callable[[], Any], state: Callable[[], Any] = lambda: None) -> Any:
    """Await ``check()`` until it returns something truthy; fail the test after SECONDS.

    ``state`` tells what was seen last, for the failure's message.
    """
    deadline = time.monotonic() + SECONDS
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.25)
    pytest.fail(f"not within {SECONDS}s: {what} (last answer {last!r}, seen {state()!r})")


async def query(session: aiohttp.ClientSession, base: str, promql: str) -> dict[tuple[str, ...], float]:
    """An instant query's samples, keyed by their label values in name order."""
    data = await api(session, base, "/api/v1/query", query=promql)
    if not data:
        return {}
    return {
        tuple(f"{k}={v}" for k, v in sorted(s["metric"].items()) if k != "__name__"): float(s["value"][1])
        for s in data["result"]
    }


async def test_prometheus_finds_every_instance_through_http_sd_and_evaluates_the_rules(
    start_process: Callable[..., MeshProcess], prometheus: str
) -> None:
    started = time.monotonic()
    backs = await asyncio.gather(*(asyncio.to_thread(start_process, "back") for _ in range(2)))
    front = await asyncio.to_thread(start_process, "front", CALL_SERVICE="back", CALL_INTERVAL_MS="20")
    expected = {p.instance_id: p.name for p in [*backs, front]}

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

        async def all_up() -> list[dict[str, Any]] | None:
            data = await api(session, prometheus, "/api/v1/targets", state="active")
            targets = (data or {}).get("activeTargets", [])
            found = {t["labels"].get("instance_id"): t for t in targets}
            if set(found) != set(expected) or any(t["health"] != "up" for t in targets):
                seen[:] = [(t["labels"], t["health"], t["lastError"]) for t in targets]
                return None
            return targets

        seen: list[Any] = []
        targets = await poll("every instance discovered and up", all_up, lambda: seen)
        for target in targets:
            labels = target["labels"]
            assert labels["service"] == expected[labels["instance_id"]]
            assert labels["node"], labels  # the Consul node's name
            assert labels["job"] == "tsunagu"
            assert target["scrapeUrl"].startswith("http://127.0.0.1:")
            assert not any(name.startswith("__meta_") for name in labels)
        up = await query(session, prometheus, "up")
        assert len(up) == 3 and set(up.values()) == {1.0}, up

        async def rules_give_series() -> dict[str, dict[tuple[str, ...], float]] | None:
            answers = {
                promql: await query(session, prometheus, promql)
                for promql in (
                    'service:grpc_server_requests:rate1m{service="back"}',
                    'service:grpc_server_error:ratio_rate1m{service="back"}',
                    'service:grpc_server_handling_seconds:p99{service="back"}',
                    "service:up:sum",
                    'edge:grpc_client_requests:rate1m{service="front"}',
                    'edge:grpc_client_error:ratio_rate1m{service="front"}',
                    'edge:mesh_endpoints:min{service="front"}',
                    'edge:mesh_circuit_breakers_open:sum{service="front"}',
                )
            }
            return answers if all(answers.values()) else None

        answers = await poll("the recording rules give series", rules_give_series)
        edge = ("service=front", "target_service=back")  # attributed to back's Consul name
        assert answers['edge:grpc_client_requests:rate1m{service="front"}'][edge] > 0
        # One call in four fails INTERNAL: about a quarter of the attempts are errors.
        assert 0.1 < answers['edge:grpc_client_error:ratio_rate1m{service="front"}'][edge] < 0.4
        assert answers['edge:mesh_endpoints:min{service="front"}'][edge] == 2
        assert answers['edge:mesh_circuit_breakers_open:sum{service="front"}'][edge] == 0
        assert answers["service:up:sum"] == {("service=back",): 2.0, ("service=front",): 1.0}
        assert answers['service:grpc_server_requests:rate1m{service="back"}'][("service=back",)] > 0

        async def every_rule_evaluated() -> list[dict[str, Any]] | None:
            data = await api(session, prometheus, "/api/v1/rules")
            rules = [rule for group in (data or {}).get("groups", []) for rule in group["rules"]]
            return rules if rules and all(rule["health"] != "unknown" for rule in rules) else None

        rules = await poll("every rule evaluated", every_rule_evaluated)
        assert len(rules) == shipped_rule_count()
        failing = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
        assert not failing, failing
    assert time.monotonic() - started < 40
