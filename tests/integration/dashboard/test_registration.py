"""``mesh dashboard --register``: service ``dashboard`` in Consul, passing on /healthz, withdrawn on SIGTERM.

A real dev agent and the real process; nothing sleeps for a state, Consul is polled.
"""

from __future__ import annotations

import signal
from pathlib import Path

from mesh.registry.dev_agent import ConsulDevAgent
from tests.integration.dashboard.conftest import start_dashboard, wait_until


def test_the_dashboard_registers_with_its_otlp_port_and_withdraws_on_sigterm(
    consul_agent: ConsulDevAgent, tmp_path: Path
) -> None:
    dashboard = start_dashboard(tmp_path, consul_agent.http_addr, "--register")
    try:
        port = int(dashboard.url.rsplit(":", 1)[1].strip("/"))
        wait_until(lambda: len(consul_agent.passing("dashboard")) == 1, 15.0, "dashboard passing in Consul")
        [entry] = consul_agent.passing("dashboard")
        assert entry["ID"] == f"dashboard-127.0.0.1-{port}"
        assert entry["Port"] == port
        assert entry["Meta"] == {"otlp_port": str(dashboard.otlp_port)}
        dashboard.process.send_signal(signal.SIGTERM)
        assert dashboard.process.wait(15) == 0
        assert consul_agent.get("/v1/health/service/dashboard") == []
    finally:
        dashboard.stop()
