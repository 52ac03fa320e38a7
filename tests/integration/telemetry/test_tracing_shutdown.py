"""A traced service stops on time, and its last spans still leave with it (real processes).

The span processor's last export is bounded at shutdown: with the collector away, a service
used to spend the exporter's whole retry budget (about 7.5 s) after SIGTERM, past its 5 s
grace; with the collector there, the spans it had not exported yet are sent on the way out.
"""

from __future__ import annotations

import asyncio

import grpc

from shop.inventory.v1 import inventory_pb2 as inv
from shop.inventory.v1.inventory_pb2_grpc import InventoryServiceStub
from tests.conftest import StartService
from tests.support.otlp import serve_receiver
from tests.support.processes import ServiceProcess, free_port

GRACE_SECONDS = 5


async def traced_inventory(start_service: StartService, otlp_port: int) -> ServiceProcess:
    """Inventory exporting to ``otlp_port``, with spans held back until it stops."""
    process = await asyncio.to_thread(
        start_service,
        "inventory",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
        OTEL_BSP_SCHEDULE_DELAY="60000",  # nothing leaves before the shutdown's flush
        MESH_GRACE_SECONDS=str(GRACE_SECONDS),
        INVENTORY_SEED_DEMO="1",
    )
    async with grpc.aio.insecure_channel(process.address) as channel:
        for _ in range(3):
            await InventoryServiceStub(channel).ListProducts(inv.ListProductsRequest())
    return process


async def test_a_service_whose_collector_is_away_stops_within_its_grace(start_service: StartService) -> None:
    process = await traced_inventory(start_service, free_port())  # nobody listens there
    assert await asyncio.to_thread(process.terminate, GRACE_SECONDS) == 0, process.logs()[-2000:]


async def test_the_spans_not_yet_exported_leave_when_the_service_stops(start_service: StartService) -> None:
    async with serve_receiver() as (collector, port):
        process = await traced_inventory(start_service, port)
        assert collector.spans == []
        assert await asyncio.to_thread(process.terminate, GRACE_SECONDS) == 0
        served = [r for r in collector.spans if r.span.name.endswith("/ListProducts")]
        assert len(served) == 3, [r.span.name for r in collector.spans]
