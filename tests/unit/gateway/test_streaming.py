"""Server streams over HTTP/1.1: NDJSON or SSE framing, the status decided by the first message."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from gateway.rules import bindings_of_files, load_files
from gateway.settings import DEFAULT_PROTO_MODULES
from gateway.streaming import EVENT_STREAM, NDJSON, Encoder, open_stream, wants_sse
from gateway.transcode import ResponseRenderer
from shop.order.v1 import order_pb2

WATCH = next(
    b
    for b in bindings_of_files(load_files(DEFAULT_PROTO_MODULES))
    if b.rpc.endswith("OrderService.WatchOrder")
)
RENDERER = ResponseRenderer(WATCH)


def update(order_id: str) -> order_pb2.WatchOrderResponse:
    return order_pb2.WatchOrderResponse(order=order_pb2.Order(order_id=order_id, user_id="u-é"))


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class FakeCall:
    """A server-streaming call: yields ``items``, raising any exception among them."""

    def __init__(self, *items: Any) -> None:
        self._items = items
        self.cancelled = 0

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        for item in self._items:
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> bool:
        self.cancelled += 1
        return True


async def body_of(response: Any) -> list[bytes]:
    return [chunk async for chunk in response.chunks]


@pytest.mark.parametrize(
    ("accept", "sse"),
    [
        (None, False),
        ("application/json", False),
        ("text/event-stream", True),
        ("application/json;q=0.5, Text/Event-Stream;q=1", True),
    ],
)
def test_sse_only_when_accepted(accept: str | None, sse: bool) -> None:
    assert wants_sse(accept) is sse


def test_ndjson_lines_wrap_each_message_in_result() -> None:
    encoder = Encoder(RENDERER, sse=False, upstream="order")
    assert encoder.content_type == NDJSON
    line = encoder.message(update("o-1"))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    order = json.loads(line)["result"]["order"]
    assert (order["orderId"], order["userId"]) == ("o-1", "u-é")
    assert "u-é".encode() in line  # not \\u-escaped


def test_sse_events_carry_messages_and_errors() -> None:
    encoder = Encoder(RENDERER, sse=True, upstream="order")
    assert encoder.content_type == EVENT_STREAM
    event = encoder.message(update("o-1"))
    assert event.startswith(b"event: message\ndata: ") and event.endswith(b"\n\n")
    assert json.loads(event.split(b"data: ", 1)[1])["order"]["orderId"] == "o-1"
    error = encoder.error(rpc_error(grpc.StatusCode.NOT_FOUND, "no order o-9"))
    assert error.startswith(b"event: error\ndata: ")
    assert json.loads(error.split(b"data: ", 1)[1]) == {"code": 5, "message": "no order o-9", "details": []}


async def test_a_stream_that_fails_midway_ends_with_an_error_line() -> None:
    call = FakeCall(update("o-1"), update("o-2"), rpc_error(grpc.StatusCode.NOT_FOUND, "gone"))
    response = await open_stream(call, Encoder(RENDERER, False, "order"), [("x-request-id", "r1")])
    assert (response.status, response.content_type, response.headers) == (
        200,
        NDJSON,
        [("x-request-id", "r1")],
    )
    lines = [json.loads(chunk) for chunk in await body_of(response)]
    assert [line["result"]["order"]["orderId"] for line in lines[:2]] == ["o-1", "o-2"]
    assert lines[2:] == [{"error": {"code": 5, "message": "gone", "details": []}}]
    assert response.close is not None
    response.close()  # the server calls close when the client goes away: the call is cancelled
    assert call.cancelled == 1


async def test_a_stream_that_fails_before_its_first_message_raises_for_a_plain_error() -> None:
    call = FakeCall(rpc_error(grpc.StatusCode.PERMISSION_DENIED, "not yours"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await open_stream(call, Encoder(RENDERER, False, "order"), [])
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert call.cancelled == 1


async def test_an_empty_stream_is_a_200_with_no_body() -> None:
    call = FakeCall()
    response = await open_stream(call, Encoder(RENDERER, True, "order"), [])
    assert (response.status, response.content_type) == (200, EVENT_STREAM)
    assert await body_of(response) == []
    assert call.cancelled == 0
