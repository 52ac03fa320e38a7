"""The grpc.aio call surface of each mesh call type, against one loopback echo server.

What callers rely on beyond ``await``: status methods used before (or instead of) awaiting,
done callbacks, cancelling, reading a stream by ``read()`` or by iteration, and a stream
closed early giving back its endpoint's slot.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from mesh.channel import MeshChannel, mesh_channel
from mesh.channel.call import MeshCall
from mesh.channel.stream_request import MeshStreamRequestCall
from mesh.channel.surface import _MultiCallable
from mesh.channel.unary import MeshUnaryUnaryCall
from mesh.channel.unary_stream import MeshUnaryStreamCall
from mesh.registry import StaticDiscovery
from shop.inventory.v1.inventory_pb2_grpc import InventoryServiceStub

SERVICE = "test.Echo"
SLOW_ARRIVED: list[asyncio.Event] = []  # set when a "slow" call reaches the server


async def _unary(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    if request == b"fail":
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    if request == b"slow":
        for arrived in SLOW_ARRIVED:
            arrived.set()
        await asyncio.sleep(30)  # the handler hangs: the test cancels it long before
    await context.send_initial_metadata((("echo-initial", "yes"),))
    context.set_trailing_metadata((("echo-trailing", "yes"),))
    return request


async def _server_stream(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[bytes]:
    for n in range(int(request or b"3")):
        yield str(n).encode()


async def _client_stream(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
) -> bytes:
    return b"".join([r async for r in requests])


async def _bidi(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request.upper()


@pytest.fixture
async def channel() -> AsyncIterator[MeshChannel]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Unary": grpc.unary_unary_rpc_method_handler(_unary),
                    "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
                    "ClientStream": grpc.stream_unary_rpc_method_handler(_client_stream),
                    "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    mesh = mesh_channel("echo", StaticDiscovery({"echo": [f"127.0.0.1:{port}"]}), outlier=None)
    yield mesh
    await mesh.close()
    await server.stop(None)


def method(channel: MeshChannel, kind: str, name: str) -> _MultiCallable:
    return getattr(channel, kind)(f"/{SERVICE}/{name}")  # type: ignore[no-any-return]


async def test_stubs_build_on_the_channel_and_each_call_type_gets_its_call_class(
    channel: MeshChannel,
) -> None:
    stub = InventoryServiceStub(channel)  # generated code calls the four methods with keywords
    assert isinstance(stub.GetProduct, _MultiCallable)
    assert MeshChannel.unary_unary.__name__ == "unary_unary"
    unary = method(channel, "unary_unary", "Unary")(b"x")
    assert isinstance(unary, MeshUnaryUnaryCall) and isinstance(unary, MeshCall)
    assert await unary == b"x"
    assert isinstance(method(channel, "unary_stream", "ServerStream")(b"1"), MeshUnaryStreamCall)
    assert isinstance(method(channel, "stream_unary", "ClientStream")(iter(())), MeshStreamRequestCall)


async def test_status_methods_before_awaiting_drive_the_call(channel: MeshChannel) -> None:
    seen: list[Any] = []
    call = method(channel, "unary_unary", "Unary")(b"hello", timeout=5)
    call.add_done_callback(seen.append)
    assert await call.code() is grpc.StatusCode.OK  # never awaited: the status drives it
    assert call.done() and seen == [call]
    assert ("echo-initial", "yes") in tuple(await call.initial_metadata())
    assert ("echo-trailing", "yes") in tuple(await call.trailing_metadata())
    assert await call == b"hello"
    failed = method(channel, "unary_unary", "Unary")(b"fail")
    assert (await failed.code(), await failed.details()) == (grpc.StatusCode.NOT_FOUND, "no such thing")


async def test_cancelling_a_unary_call_ends_it_cancelled(channel: MeshChannel) -> None:
    arrived = asyncio.Event()
    SLOW_ARRIVED.append(arrived)
    call = method(channel, "unary_unary", "Unary")(b"slow", timeout=30)
    running = asyncio.ensure_future(call.code())
    try:
        await asyncio.wait_for(arrived.wait(), 10)  # the attempt reached the server
    finally:
        SLOW_ARRIVED.remove(arrived)
    assert call.cancel()
    assert await running is grpc.StatusCode.CANCELLED
    assert call.cancelled() and not call.cancel()


async def test_a_response_stream_reads_by_read_or_by_iteration(channel: MeshChannel) -> None:
    stream = method(channel, "unary_stream", "ServerStream")
    call = stream(b"3")
    assert [await call.read() for _ in range(4)] == [b"0", b"1", b"2", grpc.aio.EOF]
    assert await call.code() is grpc.StatusCode.OK
    assert [m async for m in stream(b"2")] == [b"0", b"1"]
    buffered = stream(b"2")
    assert await buffered.code() is grpc.StatusCode.OK  # status first: the messages wait in a buffer
    assert [m async for m in buffered] == [b"0", b"1"]


async def test_a_stream_closed_early_gives_its_slot_back(channel: MeshChannel) -> None:
    call = method(channel, "unary_stream", "ServerStream")(b"100")
    async with contextlib.aclosing(aiter(call)) as messages:
        async for message in messages:
            assert message == b"0"
            break
    assert call.done() and call.cancelled()
    endpoint = channel.endpoints[0]
    assert channel.balancer.outstanding(endpoint) == 0  # type: ignore[attr-defined]


async def test_request_streams_open_on_first_use_and_report_when_done(channel: MeshChannel) -> None:
    seen: list[Any] = []
    call = method(channel, "stream_unary", "ClientStream")(iter((b"a", b"b")), timeout=5)
    call.add_done_callback(seen.append)
    assert await call == b"ab"
    assert await call.code() is grpc.StatusCode.OK and call.done()
    assert seen == [call]
    left = call.time_remaining()
    assert left is not None and 0 <= left <= 5
    bidi = method(channel, "stream_stream", "Bidi")()
    await bidi.write(b"x")
    assert await bidi.read() == b"X"
    await bidi.done_writing()
    assert await bidi.read() is grpc.aio.EOF
    assert await bidi.code() is grpc.StatusCode.OK
