"""One CreateOrder across five real processes is one trace, exported over OTLP/gRPC.

The receiver is opentelemetry-proto's collector TraceService served in-process with
grpc.aio (tests/support/otlp.py); the services export to it from the standard
``OTEL_EXPORTER_OTLP_ENDPOINT`` with a short batch delay. The call carries a ``traceparent`` (as the gateway sends one), so the trace
id is known; every server span of order, payment, inventory and shipping must carry it, every
non-order server span must be the child of an order client span, no health-check span may
exist (every process was polled by grpc.health.v1 until SERVING), and the RPC log lines carry
the same ids.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from shop.order.v1 import order_pb2 as pb
from shop.order.v1.order_pb2_grpc import OrderServiceStub
from shop.shipping.v1 import shipping_pb2 as ship
from tests.conftest import StartService
from tests.integration.services.test_order_service import login
from tests.support.otlp import Received, Receiver, serve_receiver
from tests.support.processes import ServiceProcess

TRACED = ("order", "payment", "inventory", "shipping")
SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    async with serve_receiver() as served:
        yield served


async def start_shop(start_service: StartService, otlp_port: int) -> dict[str, ServiceProcess]:
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "MESH_METRICS_PORT": "0",
    }
    extra = {"inventory": {"INVENTORY_SEED_DEMO": "1"}}
    names = ("user", "inventory", "payment", "shipping")
    started = await asyncio.gather(
        *(asyncio.to_thread(start_service, n, **otel, **extra.get(n, {})) for n in names)
    )
    processes = dict(zip(names, started, strict=True))
    upstreams = {f"MESH_UPSTREAM_{n.upper()}": processes[n].address for n in names}
    processes["order"] = await asyncio.to_thread(start_service, "order", **otel, **upstreams)
    return processes


def whole_lines(process: ServiceProcess) -> list[str]:
    """The process's log lines written so far; one still being written waits for the next read."""
    text = process.logs()
    return text[: text.rfind("\n") + 1].splitlines()


def rpc_lines(process: ServiceProcess, method: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in whole_lines(process) if line.startswith("{"))
    return [line for line in lines if line.get("event") == "rpc" and line.get("method") == method]


async def test_one_create_order_is_one_trace_across_every_service(
    start_service: StartService, receiver: tuple[Receiver, int]
) -> None:
    collector, otlp_port = receiver
    processes = await start_shop(start_service, otlp_port)
    token = await asyncio.to_thread(login, processes["user"].address, "tracy@example.com")

    trace_id, gateway_span = os.urandom(16).hex(), os.urandom(8).hex()
    metadata = (*token, ("traceparent", f"00-{trace_id}-{gateway_span}-01"))
    request = pb.CreateOrderRequest(
        items=[pb.OrderItem(sku="CUP-YUNOMI", quantity=1)],
        shipping_address=ship.Address(
            recipient="Tracy", line1="1 Rue", city="Paris", postal_code="75001", country_code="FR"
        ),
        request_id=f"trace-{trace_id}",
    )
    async with grpc.aio.insecure_channel(processes["order"].address) as channel:
        placed = await OrderServiceStub(channel).CreateOrder(request, metadata=metadata, timeout=30)
    assert placed.order.status == pb.ORDER_STATUS_CONFIRMED, placed.order.status_reason

    def ours() -> list[Received]:
        return [r for r in collector.spans if r.span.trace_id.hex() == trace_id]

    def servers_seen() -> set[str]:
        return {r.service for r in ours() if r.span.kind == SERVER}

    await collector.wait_for(lambda: servers_seen() >= set(TRACED), within=20)

    in_trace = ours()
    (root,) = [r.span for r in in_trace if r.service == "order" and r.span.kind == SERVER]
    assert root.name == "shop.order.v1.OrderService/CreateOrder"
    assert root.parent_span_id.hex() == gateway_span
    order_clients = {r.span.span_id for r in in_trace if r.service == "order" and r.span.kind == CLIENT}
    for received in in_trace:
        if received.span.kind == SERVER and received.service != "order":
            assert received.span.parent_span_id in order_clients, received
    # Every server span from the saga's services belongs to this one trace.
    stray = [
        (r.service, r.span.name)
        for r in collector.spans
        if r.service in TRACED and r.span.kind == SERVER and r.span.trace_id.hex() != trace_id
    ]
    assert stray == []
    assert not [r.span.name for r in collector.spans if "grpc.health" in r.span.name]

    (line,) = rpc_lines(processes["order"], "CreateOrder")
    assert line["code"] == "OK" and line["rpc_service"] == "shop.order.v1.OrderService"
    assert line["trace_id"] == trace_id and line["span_id"] == root.span_id.hex()
    assert line["duration_ms"] > 0 and line["peer"] and line["service"] == "order"
    for name in ("payment", "inventory", "shipping"):
        lines = [json.loads(x) for x in whole_lines(processes[name]) if '"event": "rpc"' in x]
        assert lines and all(x["trace_id"] == trace_id for x in lines), lines
