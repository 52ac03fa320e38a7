"""A real inventory process: its /metrics port is found through its Consul meta, then scraped
over HTTP before and after calls; the counters move by exactly the calls made, per method and
status code (an error code included).
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh.registry import ConsulDiscovery
from mesh.registry.dev_agent import ConsulDevAgent
from shop.inventory.v1 import inventory_pb2 as inv
from shop.inventory.v1.inventory_pb2_grpc import InventoryServiceStub
from tests.conftest import StartService

SERVICE = "shop.inventory.v1.InventoryService"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: str) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(
        (name, frozenset({"grpc_service": SERVICE, "grpc_type": "unary", **labels}.items())), 0.0
    )


async def scrape_until(port: str, settled: Callable[[Samples], bool]) -> Samples:
    """A scrape in which ``settled`` holds, polling for up to five seconds."""
    deadline = asyncio.get_running_loop().time() + 5.0
    samples = await asyncio.to_thread(scrape, port)
    while not settled(samples) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        samples = await asyncio.to_thread(scrape, port)
    return samples


async def metrics_port(consul: ConsulDevAgent, name: str) -> str:
    """The metrics_port the instance published, once Consul lists it as passing."""
    discovery = ConsulDiscovery(consul.http_addr)
    watcher = discovery.watch(name)
    try:
        endpoints = await asyncio.wait_for(watcher.next(), 30)
        while not endpoints:
            endpoints = await asyncio.wait_for(watcher.next(), 30)
        return endpoints[0].meta["metrics_port"]
    finally:
        watcher.close()
        await discovery.close()


async def test_scraped_counts_move_by_method_and_code(
    start_service: StartService, consul_agent: ConsulDevAgent
) -> None:
    process = await asyncio.to_thread(
        start_service,
        "inventory",
        CONSUL_HTTP_ADDR=consul_agent.http_addr,
        INVENTORY_SEED_DEMO="1",
        MESH_METRICS_PORT="0",
    )
    port = await metrics_port(consul_agent, "inventory")
    before = await asyncio.to_thread(scrape, port)

    async with grpc.aio.insecure_channel(process.address) as channel:
        stub = InventoryServiceStub(channel)
        for _ in range(3):
            await stub.ListProducts(inv.ListProductsRequest())
        await stub.GetProduct(inv.GetProductRequest(sku="CUP-YUNOMI"))
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await stub.GetProduct(inv.GetProductRequest(sku="NO-SUCH-SKU"))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    # grpc.aio sends an aborted call's status before the handler's wrappers return, so the
    # server may count the last NOT_FOUND a moment after the client has seen it.
    after = await scrape_until(
        port, lambda samples: value(samples, "grpc_server_in_flight_calls", grpc_method="GetProduct") == 0
    )

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    handled = "grpc_server_handled_total"
    assert moved(handled, grpc_method="ListProducts", grpc_code="OK") == 3
    assert moved(handled, grpc_method="GetProduct", grpc_code="OK") == 1
    assert moved(handled, grpc_method="GetProduct", grpc_code="NOT_FOUND") == 2
    assert moved("grpc_server_started_total", grpc_method="GetProduct") == 3
    assert moved("grpc_server_handling_seconds_count", grpc_method="ListProducts") == 3
    assert value(after, "grpc_server_in_flight_calls", grpc_method="GetProduct") == 0
    # Consul's probes are RPCs too, counted under the health service.
    health = ("grpc_server_handled_total", "grpc.health.v1.Health", "Check", "OK")
    assert any(
        name == health[0]
        and dict(labels).get("grpc_service") == health[1]
        and dict(labels).get("grpc_code") == "OK"
        for name, labels in after
    ), process.logs()
