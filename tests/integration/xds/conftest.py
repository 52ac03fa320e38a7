"""A real Consul dev agent, a real ``mesh xds`` process and a raw ADS stream to read it with.

The agent is the shared ``consul_agent`` fixture (tests/conftest.py: free loopback ports,
killed by PID). Instances are registered through the agent's API with a TTL check, so a test
turns one passing or critical with one request and no server process. ``mesh xds`` runs as
``python -m mesh.xds`` (tests/support/xds.py's ControlPlane: ready when its gRPC health says
SERVING and its bootstrap file exists, polled). :class:`AdsProbe` is an xDS client reduced to
the protocol: it sends DiscoveryRequests and reads DiscoveryResponses, each read bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from mesh.registry.dev_agent import ConsulDevAgent
from mesh.xds.model import CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER, ROUTE_CONFIGURATION
from tests.support.xds import ControlPlane

READ_WITHIN = 15.0
KINDS: dict[str, Callable[[], Any]] = {
    LISTENER: listener_pb2.Listener,
    ROUTE_CONFIGURATION: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    CLUSTER_LOAD_ASSIGNMENT: endpoint_pb2.ClusterLoadAssignment,
}


def register(agent: ConsulDevAgent, name: str, instance: str, port: int, status: str = "passing") -> None:
    """Register ``instance`` of ``name`` at 127.0.0.1:``port`` with a TTL check in ``status``."""
    agent.put(
        "/v1/agent/service/register",
        {
            "Name": name,
            "ID": instance,
            "Address": "127.0.0.1",
            "Port": port,
            "Check": {"CheckID": f"{instance}-ttl", "TTL": "300s", "Status": status},
        },
    )


def set_check(agent: ConsulDevAgent, instance: str, status: str) -> None:
    """Turn ``instance``'s TTL check ``pass``, ``warn`` or ``fail``."""
    agent.put(f"/v1/agent/check/{status}/{instance}-ttl")


def deregister(agent: ConsulDevAgent, instance: str) -> None:
    agent.put(f"/v1/agent/service/deregister/{instance}")


def unpack(response: discovery_pb2.DiscoveryResponse) -> dict[str, Any]:
    """A response's resources by name, unpacked as its type."""
    out = {}
    for packed in response.resources:
        message = KINDS[response.type_url]()
        assert packed.Unpack(message)
        out[message.cluster_name if response.type_url == CLUSTER_LOAD_ASSIGNMENT else message.name] = message
    return out


def endpoints(assignment: Any) -> dict[int, str]:
    """port -> health status name of every endpoint of a ClusterLoadAssignment."""
    from envoy.config.core.v3 import health_check_pb2

    return {
        lb.endpoint.address.socket_address.port_value: health_check_pb2.HealthStatus.Name(lb.health_status)
        for group in assignment.endpoints
        for lb in group.lb_endpoints
    }


class AdsProbe:
    """One ADS stream to a control plane, with the node id ``node_id``."""

    def __init__(self, port: int, node_id: str = "probe") -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel).StreamAggregatedResources()
        self.node_id = node_id
        self._first = True

    async def request(
        self, type_url: str, names: tuple[str, ...] = (), *, version: str = "", nonce: str = ""
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce
        )
        if self._first:
            request.node.id, self._first = self.node_id, False
        await self.call.write(request)

    async def read(self, within: float = READ_WITHIN) -> discovery_pb2.DiscoveryResponse:
        response = await asyncio.wait_for(self.call.read(), within)
        assert response is not grpc.aio.EOF, "the control plane ended the stream"
        return response

    async def ack(self, response: discovery_pb2.DiscoveryResponse, names: tuple[str, ...] = ()) -> None:
        await self.request(response.type_url, names, version=response.version_info, nonce=response.nonce)

    async def close(self) -> None:
        await self.channel.close()


@pytest.fixture
def start_plane(consul_agent: ConsulDevAgent, tmp_path: Path) -> Iterator[Callable[..., ControlPlane]]:
    """Start ``mesh xds`` processes against the test's agent; each is killed by PID afterwards."""
    planes: list[ControlPlane] = []

    def start(**options: Any) -> ControlPlane:
        plane = ControlPlane(consul_agent.http_addr, tmp_path / f"xds-{len(planes)}", **options)
        planes.append(plane)
        return plane.start()

    yield start
    for plane in planes:
        plane.kill()


@pytest.fixture
async def probes() -> AsyncIterator[Callable[..., AdsProbe]]:
    """Open ADS streams; every one is closed afterwards."""
    opened: list[AdsProbe] = []

    def open_probe(port: int, node_id: str = "probe") -> AdsProbe:
        probe = AdsProbe(port, node_id)
        opened.append(probe)
        return probe

    yield open_probe
    for probe in opened:
        await probe.close()
