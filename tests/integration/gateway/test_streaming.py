"""Against a tiny in-test OrderService: server streaming over HTTP, and response metadata."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from gateway.settings import GatewaySettings
from gateway.upstream import StaticChannelFactory
from mesh.identity import JwtSettings
from shop.order.v1 import order_pb2, order_pb2_grpc
from tests.integration.gateway.inprocess import CountingFactory, serve
from tests.support.tokens import KID, KeyPair


class Watcher(order_pb2_grpc.OrderServiceServicer):
    """``ok-N``: N updates then the end; ``missing``: NOT_FOUND at once; ``fail``: two then an
    error; ``slow``: one update then waits until cancelled."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.metadata: dict[str, str] = {}

    async def GetOrder(
        self, request: order_pb2.GetOrderRequest, context: grpc.aio.ServicerContext
    ) -> order_pb2.GetOrderResponse:
        await context.send_initial_metadata((("x-order-version", "7"), ("x-internal", "secret")))
        context.set_trailing_metadata((("x-debug", "hidden"),))
        return order_pb2.GetOrderResponse(order=order_pb2.Order(order_id=request.order_id))

    async def WatchOrder(
        self, request: order_pb2.WatchOrderRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[order_pb2.WatchOrderResponse]:
        self.metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        order_id = request.order_id
        if order_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"order '{order_id}' not found")
        count = int(order_id.split("-")[1]) if order_id.startswith("ok-") else 2
        statuses = [order_pb2.ORDER_STATUS_PENDING] * (count - 1) + [order_pb2.ORDER_STATUS_CONFIRMED]
        for status in statuses:
            yield order_pb2.WatchOrderResponse(order=order_pb2.Order(order_id=order_id, status=status))
        if order_id == "fail":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "inventory is unavailable")
        if order_id == "slow":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise


@pytest.fixture
async def order_server() -> AsyncIterator[tuple[str, Watcher]]:
    server = grpc.aio.server()
    watcher = Watcher()
    order_pb2_grpc.add_OrderServiceServicer_to_server(watcher, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", watcher
    await server.stop(0)


def settings(keys: KeyPair, target: str, **overrides: object) -> GatewaySettings:
    return GatewaySettings(
        upstreams={"order": target},
        jwt=JwtSettings(public_keys={KID: keys.public.read_text()}, leeway_seconds=0.5),
        **overrides,  # type: ignore[arg-type]
    )


def stream(port: int, path: str, token: str, accept: str = "application/json") -> tuple[int, str, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path, headers={"Authorization": f"Bearer {token}", "Accept": accept})
    response = connection.getresponse()
    body = response.read().decode()
    connection.close()
    return response.status, response.getheader("content-type") or "", body


async def test_ndjson_lines_then_the_end(order_server: tuple[str, Watcher], jwt_keys: KeyPair) -> None:
    target, watcher = order_server
    factory = CountingFactory(StaticChannelFactory({"order": target}))
    async with serve(settings(jwt_keys, target), factory) as gateway:
        status, content_type, body = await asyncio.to_thread(
            stream, gateway.port, "/v1/orders/ok-3:watch", jwt_keys.token("u1")
        )
    assert status == 200 and content_type == "application/x-ndjson"
    lines = [json.loads(line) for line in body.splitlines()]
    assert [line["result"]["order"]["status"] for line in lines] == ["ORDER_STATUS_PENDING"] * 2 + [
        "ORDER_STATUS_CONFIRMED"
    ]
    assert factory.calls == 1
    assert watcher.metadata["authorization"].startswith("Bearer ")
    assert watcher.metadata["x-principal-subject"] == "u1"


async def test_server_sent_events(order_server: tuple[str, Watcher], jwt_keys: KeyPair) -> None:
    target, _ = order_server
    async with serve(settings(jwt_keys, target), StaticChannelFactory({"order": target})) as gateway:
        status, content_type, body = await asyncio.to_thread(
            stream, gateway.port, "/v1/orders/ok-2:watch", jwt_keys.token("u1"), "text/event-stream"
        )
    assert status == 200 and content_type == "text/event-stream"
    events = [e for e in body.split("\n\n") if e]
    assert len(events) == 2 and all(e.startswith("event: message\ndata: {") for e in events)


async def test_error_before_the_first_message_is_a_plain_status(
    order_server: tuple[str, Watcher], jwt_keys: KeyPair
) -> None:
    target, _ = order_server
    async with serve(settings(jwt_keys, target), StaticChannelFactory({"order": target})) as gateway:
        status, content_type, body = await asyncio.to_thread(
            stream, gateway.port, "/v1/orders/missing:watch", jwt_keys.token("u1")
        )
    assert status == 404 and content_type == "application/json"
    assert json.loads(body)["code"] == 5


@pytest.mark.parametrize("accept", ["application/json", "text/event-stream"])
async def test_error_mid_stream_is_the_last_item(
    order_server: tuple[str, Watcher], jwt_keys: KeyPair, accept: str
) -> None:
    target, _ = order_server
    async with serve(settings(jwt_keys, target), StaticChannelFactory({"order": target})) as gateway:
        status, _, body = await asyncio.to_thread(
            stream, gateway.port, "/v1/orders/fail:watch", jwt_keys.token("u1"), accept
        )
    assert status == 200
    if accept == "text/event-stream":
        last = body.strip().split("\n\n")[-1]
        assert last.startswith("event: error\ndata: ")
        assert json.loads(last.split("data: ", 1)[1])["code"] == 14
    else:
        lines = [json.loads(line) for line in body.splitlines()]
        assert "result" in lines[0] and lines[-1]["error"]["code"] == 14


async def test_client_going_away_cancels_the_upstream_call(
    order_server: tuple[str, Watcher], jwt_keys: KeyPair
) -> None:
    target, watcher = order_server
    async with serve(settings(jwt_keys, target), StaticChannelFactory({"order": target})) as gateway:
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(
            f"GET /v1/orders/slow:watch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {jwt_keys.token('u1')}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(reader.readuntil(b"\n"), 10)  # the chunk size line of the first update
        writer.close()
        await asyncio.wait_for(watcher.cancelled.wait(), 10)


async def test_only_allow_listed_response_metadata_becomes_headers(
    order_server: tuple[str, Watcher], jwt_keys: KeyPair
) -> None:
    target, _ = order_server
    allow = frozenset({"x-order-version", "x-debug"})
    async with serve(
        settings(jwt_keys, target, response_metadata=allow), StaticChannelFactory({"order": target})
    ) as gateway:
        status, headers, body = await gateway.request("GET", "/v1/orders/o-1", token=jwt_keys.token("u1"))
    assert status == 200 and json.loads(body)["orderId"] == "o-1"
    assert headers["grpc-metadata-x-order-version"] == "7" and headers["grpc-metadata-x-debug"] == "hidden"
    assert "grpc-metadata-x-internal" not in headers
