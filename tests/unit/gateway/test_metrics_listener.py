"""The gateway's metrics have their own listener, as every service's do; the API port has none."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest

from tests.unit.gateway.running import running_gateway


async def get(host: str, port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        assert response.status == 200
        return str(response.read().decode())


async def test_metrics_are_served_on_the_metrics_port_and_not_on_the_api_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_gateway(tmp_path, monkeypatch, caplog) as gateway:
        host, port = gateway.address
        assert (await get(host, port, "/openapi.json"))[0] == 200
        status, body = await get(host, port, "/metrics")
        assert status == 404, body
        metrics_address = gateway.listening.__dict__["metrics_address"]
        metrics_host, _, metrics_port = metrics_address.rpartition(":")
        assert metrics_host == gateway.settings.host and int(metrics_port) not in (0, port)
        text = await asyncio.to_thread(scrape, metrics_address)
        assert 'gateway_requests_total{method="GET",route="/openapi.json",status="200"}' in text
        assert 'gateway_requests_total{method="GET",route="unmatched",status="404"}' in text
        assert "gateway_open_connections " in text
