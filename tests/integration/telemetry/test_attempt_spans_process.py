"""A call the order process fails over to a second inventory endpoint has one span per attempt.

Real processes (user, payment, shipping, inventory, order) export over OTLP/gRPC to an
in-process receiver. Order's inventory upstream lists a dead address first: a call that
picks it is refused at the transport and moves to the live instance, so its CLIENT call span
must have two attempt children (``mesh.attempt`` 1 then 2, the first UNAVAILABLE at the dead
address, the second OK), and inventory's SERVER span must be the child of the attempt that
reached it: the ``traceparent`` each attempt sent was its own span's.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from shop.order.v1 import order_pb2 as pb
from shop.order.v1.order_pb2_grpc import OrderServiceStub
from shop.shipping.v1 import shipping_pb2 as ship
from tests.conftest import StartService
from tests.integration.services.test_order_service import login
from tests.support.otlp import Receiver, serve_receiver
from tests.support.processes import free_port

SERVER = trace_pb2.Span.SPAN_KIND_SERVER
CLIENT = trace_pb2.Span.SPAN_KIND_CLIENT
INVENTORY = "shop.inventory.v1.InventoryService"


@pytest.fixture
async def otlp() -> AsyncIterator[tuple[Receiver, int]]:
    """An OTLP/gRPC trace receiver on 127.0.0.1."""
    async with serve_receiver() as served:
        yield served


def attributes(span: trace_pb2.Span) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in span.attributes:
        kind = item.value.WhichOneof("value")
        values[item.key] = getattr(item.value, kind) if kind else None
    return values


async def test_a_failed_over_call_has_a_span_per_attempt_each_parenting_its_server_span(
    start_service: StartService, otlp: tuple[Receiver, int]
) -> None:
    collector, otlp_port = otlp
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "MESH_METRICS_PORT": "0",
    }
    names = ("user", "inventory", "payment", "shipping")
    extra = {"inventory": {"INVENTORY_SEED_DEMO": "1"}}
    started = await asyncio.gather(
        *(asyncio.to_thread(start_service, n, **otel, **extra.get(n, {})) for n in names)
    )
    processes = dict(zip(names, started, strict=True))
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: connections are refused
    upstreams = {f"MESH_UPSTREAM_{n.upper()}": processes[n].address for n in names}
    upstreams["MESH_UPSTREAM_INVENTORY"] = f"{dead},{processes['inventory'].address}"
    order = await asyncio.to_thread(start_service, "order", **otel, **upstreams)
    token = await asyncio.to_thread(login, processes["user"].address, "attempts@example.com")

    def inventory_calls(trace_id: str) -> list[trace_pb2.Span]:
        return [
            r.span
            for r in collector.spans
            if r.service == "order"
            and r.span.kind == CLIENT
            and r.span.trace_id.hex() == trace_id
            and r.span.name.startswith(INVENTORY)
            and "mesh.attempt" not in attributes(r.span)
        ]

    # Each inventory call picks the dead address first about half the time (P2C over two):
    # place orders until one call failed over, bounded in count and time.
    failed_over: tuple[str, trace_pb2.Span] | None = None
    deadline = time.monotonic() + 60
    async with grpc.aio.insecure_channel(order.address) as channel:
        stub = OrderServiceStub(channel)
        for n in range(12):
            assert time.monotonic() < deadline, "no inventory call failed over within 60 s"
            trace_id = os.urandom(16).hex()
            metadata = (*token, ("traceparent", f"00-{trace_id}-{os.urandom(8).hex()}-01"))
            request = pb.CreateOrderRequest(
                items=[pb.OrderItem(sku="CUP-YUNOMI", quantity=1)],
                shipping_address=ship.Address(
                    recipient="Ada", line1="1 Rue", city="Paris", postal_code="75001", country_code="FR"
                ),
                request_id=f"attempts-{n}-{trace_id}",
            )
            placed = await stub.CreateOrder(request, metadata=metadata, timeout=30)
            assert placed.order.status == pb.ORDER_STATUS_CONFIRMED, placed.order.status_reason
            # The order's server span ends after its client spans: once it is in, they all are.
            await collector.wait_for(
                lambda t=trace_id: any(
                    r.service == "order" and r.span.kind == SERVER and r.span.trace_id.hex() == t
                    for r in collector.spans
                ),
                within=20,
            )
            for call in inventory_calls(trace_id):
                children = [
                    r.span
                    for r in collector.spans
                    if r.span.trace_id.hex() == trace_id and r.span.parent_span_id == call.span_id
                ]
                if len(children) >= 2:
                    failed_over = (trace_id, call)
                    break
            if failed_over is not None:
                break
    assert failed_over is not None, "no inventory call picked the dead address first in 12 orders"

    trace_id, call = failed_over
    in_trace = [r for r in collector.spans if r.span.trace_id.hex() == trace_id]
    attempts = sorted(
        (r.span for r in in_trace if r.span.parent_span_id == call.span_id and r.service == "order"),
        key=lambda s: attributes(s)["mesh.attempt"],
    )
    assert [attributes(a)["mesh.attempt"] for a in attempts] == [1, 2]
    first, second = attempts
    assert attributes(first)["server.port"] == int(dead.rsplit(":", 1)[1])
    assert attributes(first)["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert first.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert attributes(second)["server.port"] == int(processes["inventory"].address.rsplit(":", 1)[1])
    assert attributes(second)["rpc.grpc.status_code"] == 0
    assert attributes(call)["rpc.grpc.status_code"] == 0 and first.kind == second.kind == CLIENT
    # inventory's server span for this call is the child of the attempt that reached it
    await collector.wait_for(
        lambda: any(
            r.service == "inventory" and r.span.parent_span_id == second.span_id for r in collector.spans
        ),
        within=20,
    )
    assert not [r for r in in_trace if r.service == "inventory" and r.span.parent_span_id == first.span_id]
    order_server = [r.span for r in in_trace if r.service == "order" and r.span.kind == SERVER]
    assert call.parent_span_id in {s.span_id for s in order_server}
