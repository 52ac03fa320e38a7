"""Registration and discovery against a real Consul agent and real server processes."""

from __future__ import annotations

import asyncio
import io
import json
import time

import grpc
import grpc.aio
import pytest

from mesh.channel import mesh_channel
from mesh.errors import RegistryUnavailable
from mesh.registry.consul import ConsulDiscovery
from mesh.status import collect_status, render_status, run_status, status_as_dict
from tests.integration.discovery.conftest import ConsulAgent, StartEcho, wait_passing, wait_until
from tests.integration.discovery.echo_server import ECHO, SERVICE
from tests.support.processes import free_port


async def test_an_instance_registers_with_a_grpc_check_and_its_meta(
    consul: ConsulAgent, start_echo: StartEcho
) -> None:
    echo = start_echo(MESH_VERSION="2.0.1", MESH_TAGS="blue,canary")
    await wait_passing(consul, "echo", {echo.target}, within=5)
    (service,) = consul.passing("echo")
    assert service["ID"] == f"echo-127.0.0.1-{echo.port}"
    assert service["Meta"] == {"version": "2.0.1", "grpc_services": SERVICE, "mtls": "off"}
    assert service["Tags"] == ["blue", "canary"]
    checks = consul.get("/v1/agent/checks")
    assert isinstance(checks, dict)
    (check,) = [c for c in checks.values() if c["ServiceID"] == service["ID"]]
    assert check["Type"] == "grpc" and check["Status"] == "passing"


async def test_graceful_stop_deregisters_instead_of_leaving_a_critical_entry(
    consul: ConsulAgent, start_echo: StartEcho
) -> None:
    echo = start_echo()
    await wait_passing(consul, "echo", {echo.target}, within=5)
    assert echo.terminate() == 0
    rows = consul.get("/v1/health/service/echo")
    assert rows == []  # gone at once, not merely critical


async def test_an_instance_the_agent_forgot_registers_again(
    consul: ConsulAgent, start_echo: StartEcho
) -> None:
    echo = start_echo()
    await wait_passing(consul, "echo", {echo.target}, within=5)
    consul.put(f"/v1/agent/service/deregister/echo-127.0.0.1-{echo.port}")
    assert consul.passing("echo") == []
    await wait_passing(consul, "echo", {echo.target}, within=6)  # resync every 2 s, then the check


async def test_the_watcher_follows_instances_as_they_come_and_go(
    consul: ConsulAgent, start_echo: StartEcho
) -> None:
    discovery = ConsulDiscovery(consul.http_addr)
    channel = mesh_channel("echo", discovery)
    try:
        first = start_echo()
        await channel.wait_for_endpoints(1, within=10)
        second = start_echo()
        await wait_until(lambda: len(channel.endpoints) == 2, 10, "second instance discovered")
        assert {e.target for e in channel.endpoints} == {first.target, second.target}
        first.terminate()
        took = await wait_until(lambda: len(channel.endpoints) == 1, 5, "stopped instance gone")
        assert took < 1.0  # deregistration wakes the blocking query at once
        assert await channel.unary_unary(ECHO)(b"x", timeout=5) == second.label + b"|x"
    finally:
        await channel.close()
        await discovery.close()


async def test_an_unknown_service_fails_fast_with_unavailable(consul: ConsulAgent) -> None:
    discovery = ConsulDiscovery(consul.http_addr)
    channel = mesh_channel("nobody", discovery)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(ECHO)(b"x", timeout=10)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert raised.value.details() == "no healthy endpoint for 'nobody'"
    assert time.monotonic() - started < 1.0
    await channel.close()
    await discovery.close()


async def test_status_shows_instances_health_and_the_endpoints_to_call(
    consul: ConsulAgent, start_echo: StartEcho
) -> None:
    blue = start_echo(MESH_TAGS="blue")
    green = start_echo(MESH_TAGS="green")
    await wait_passing(consul, "echo", {blue.target, green.target}, within=5)
    status = await collect_status(consul.http_addr)
    (service,) = status.services
    assert service.name == "echo" and service.passing == 2
    assert {e.target for e in service.endpoints} == {blue.target, green.target}
    text = render_status(status)
    assert "echo  2/2 passing" in text and blue.target in text and "would call:" in text
    out = io.StringIO()
    assert await asyncio.to_thread(run_status, consul.http_addr, as_json=True, out=out) == 0
    assert json.loads(out.getvalue())["services"][0]["passing"] == 2

    green.kill()  # stays registered, turns critical within the check interval
    await wait_passing(consul, "echo", {blue.target}, within=5)
    only_blue = await collect_status(consul.http_addr, ["echo"], tags=("blue",))
    data = status_as_dict(only_blue)
    assert data["services"][0]["endpoints"] == [blue.target]
    assert {i["status"] for i in data["services"][0]["instances"]} == {"passing", "critical"}


async def test_status_says_when_consul_does_not_answer() -> None:
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RegistryUnavailable):
        await collect_status(nobody)
    assert await asyncio.to_thread(run_status, nobody, out=io.StringIO()) == 2
