"""``mesh xds`` wiring that needs no Consul: agent facts, the stream closer, health, the serving line.

The process as a whole (start order, registration, SIGTERM) runs in tests/integration/xds.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from mesh.errors import RegistryUnavailable
from mesh.xds.catalog import ConsulCatalogReader
from mesh.xds.main import AgentFacts, StreamCloser, XdsProcess, agent_facts
from mesh.xds.server import AggregatedDiscoveryService, ResourceCache, add_to_server
from mesh.xds.settings import XdsSettings
from tests.support.waiting import wait_until


class RefusingReader(ConsulCatalogReader):
    """``/v1/agent/self`` refused (a token without agent:read); the datacenter list answers."""

    async def agent_self(self) -> tuple[str, str]:
        raise RegistryUnavailable("consul", "agent self: 403 Permission denied")

    async def datacenters(self) -> list[str]:
        return ["dc2", "dc1"]


async def test_without_agent_read_the_nearest_datacenter_is_taken() -> None:
    assert await agent_facts(RefusingReader("http://127.0.0.1:1")) == AgentFacts("dc2", "")


async def test_the_stream_closer_ends_open_streams_when_the_server_stops() -> None:
    ads = AggregatedDiscoveryService(ResourceCache())
    server = grpc.aio.server()
    add_to_server(ads, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
            await call.write(discovery_pb2.DiscoveryRequest(type_url="x"))
            await wait_until(lambda: len(ads.clients) == 1, 5, "the server has the stream")
            await StreamCloser(ads).on_stopping()
            assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
    finally:
        await server.stop(None)


def test_health_and_the_serving_line_before_start(tmp_path: Path) -> None:
    process = XdsProcess(XdsSettings(port=0, insecure=True, bootstrap_out=tmp_path / "b.json"))
    health = process.health()
    assert health["status"] == "ok" and health["ready"] is False and health["mtls"] is False
    assert process.resources() == {"version": 0, "types": {}}
