"""The gateway in Consul like every service: its metrics on their own port, published as meta.

A real gateway process and a real Consul dev agent on 127.0.0.1. The upstreams are catalog
entries only (no checks, so passing): what is under test is the gateway's own registration,
its HTTP check against /readyz, its metrics listener, and its withdrawal on SIGTERM.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from gateway.settings import DEFAULT_UPSTREAMS
from mesh.registry.dev_agent import ConsulDevAgent
from tests.integration.gateway.conftest import start_gateway
from tests.support.processes import free_port
from tests.support.tokens import KeyPair


def put_json(agent: ConsulDevAgent, path: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(agent.http_addr + path, method="PUT", data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=2):
        pass


def gateway_rows(agent: ConsulDevAgent) -> list[dict[str, Any]]:
    services = agent.get("/v1/agent/services")
    assert isinstance(services, dict)
    return [row for row in services.values() if row["Service"] == "gateway"]


def checks_of(agent: ConsulDevAgent, service: str) -> list[dict[str, Any]]:
    checks = agent.get("/v1/agent/checks")
    assert isinstance(checks, dict)
    return [check for check in checks.values() if check["ServiceName"] == service]


def wait_for(predicate: Any, within: float, what: str, explain: Any = None) -> Any:
    """``predicate()`` once truthy; else AssertionError with what ``explain()`` shows then."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.1)  # poll interval
    raise AssertionError(f"not within {within}s: {what}" + (f"; {explain()}" if explain else ""))


def test_the_gateway_registers_with_its_metrics_port_and_deregisters_on_sigterm(
    consul_agent: ConsulDevAgent, jwt_keys: KeyPair, tmp_path: Path
) -> None:
    for name in DEFAULT_UPSTREAMS:  # endpoints for every upstream, so /readyz answers 200
        port = free_port()
        put_json(
            consul_agent,
            "/v1/agent/service/register",
            {"ID": f"{name}-{port}", "Name": name, "Address": "127.0.0.1", "Port": port},
        )
    env = {
        "CONSUL_HTTP_ADDR": consul_agent.http_addr,
        "MESH_JWT_PUBLIC_KEY_FILE": str(jwt_keys.public),
        "MESH_JWT_KID": "user-1",
        "GATEWAY_RATE_LIMIT_PER_SECOND": "0",
    }
    gateway = start_gateway(tmp_path, env)
    try:
        assert gateway.request("GET", "/openapi.json")[0] == 200
        status, _, body = gateway.request("GET", "/metrics")
        assert status == 404, body[:200]  # not on the API port

        # Within 30 s: CI's busy machine once took over 10 (the check's output says why if not).
        passing = wait_for(
            lambda: consul_agent.passing("gateway"),
            30,
            "the gateway passing its check in Consul",
            explain=lambda: checks_of(consul_agent, "gateway"),
        )
        [row] = passing
        assert row["Address"] == "127.0.0.1" and row["Port"] == gateway.port
        metrics_port = int(row["Meta"]["metrics_port"])
        assert metrics_port != gateway.port
        [check] = checks_of(consul_agent, "gateway")
        assert check["Type"] == "http" and check["Status"] == "passing"

        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        assert 'gateway_requests_total{method="GET",route="/openapi.json",status="200"}' in text
    finally:
        assert gateway.stop() == 0
    assert gateway_rows(consul_agent) == []  # withdrawn on the way out, not left to go critical
    assert '"gateway deregistered"' in gateway.logs() or "deregistered" in gateway.logs()
