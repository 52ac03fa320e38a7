"""The deadline interceptor on the shared per-call-type wrapper, one test per call type.

grpc.aio hands each call type its own handler shape (a unary response is awaited, a stream
is iterated), so a call type the wrapper got wrong would show up here as a missing or
leaked deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import grpc
import grpc.aio
import pytest

from mesh.deadline import remaining
from mesh.rpc import RpcCache
from mesh.server.deadline import DeadlineInterceptor
from mesh.server.wrap import status_of, wrap_service

SERVICE = "test.Deadline"
Seen = list[float | None]


def handlers(seen: Seen) -> dict[str, grpc.RpcMethodHandler]:
    async def unary(request: bytes, context: Any) -> bytes:
        seen.append(remaining())
        return request

    async def server_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        seen.append(remaining())
        yield request
        seen.append(remaining())  # still published while the stream runs

    async def written_stream(request: bytes, context: Any) -> None:
        seen.append(remaining())
        await context.write(request)

    async def client_stream(requests: AsyncIterator[bytes], context: Any) -> bytes:
        seen.append(remaining())
        return b"".join([item async for item in requests])

    async def bidi(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        seen.append(remaining())
        async for item in requests:
            yield item

    return {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "WrittenStream": grpc.unary_stream_rpc_method_handler(written_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }


@pytest.fixture
async def served() -> AsyncIterator[tuple[grpc.aio.Channel, Seen]]:
    seen: Seen = []
    server = grpc.aio.server(interceptors=[DeadlineInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers(seen))])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, seen
    finally:
        await channel.close()
        await server.stop(None)


async def items(*values: bytes) -> AsyncIterator[bytes]:
    for value in values:
        yield value


async def call_each_type(channel: grpc.aio.Channel, deadline: float | None) -> None:
    timeout = deadline
    assert await channel.unary_unary(f"/{SERVICE}/Unary")(b"u", timeout=timeout) == b"u"
    assert [r async for r in channel.unary_stream(f"/{SERVICE}/ServerStream")(b"s", timeout=timeout)] == [
        b"s"
    ]
    assert [r async for r in channel.unary_stream(f"/{SERVICE}/WrittenStream")(b"w", timeout=timeout)] == [
        b"w"
    ]
    client_stream = channel.stream_unary(f"/{SERVICE}/ClientStream")
    assert await client_stream(items(b"a", b"b"), timeout=timeout) == b"ab"
    bidi = channel.stream_stream(f"/{SERVICE}/Bidi")(items(b"x"), timeout=timeout)
    assert [r async for r in bidi] == [b"x"]


async def test_every_call_type_sees_its_callers_deadline(served: tuple[grpc.aio.Channel, Seen]) -> None:
    channel, seen = served
    await call_each_type(channel, deadline=5.0)
    assert len(seen) == 6
    for left in seen:
        assert left is not None and 0 < left <= 5.1  # the server's clock rounds up a little


async def test_a_call_without_deadline_publishes_none(served: tuple[grpc.aio.Channel, Seen]) -> None:
    channel, seen = served
    await call_each_type(channel, deadline=None)
    assert seen == [None] * 6
    assert remaining() is None  # nothing leaked into the caller's context


class FakeContext:
    def __init__(self, code: Any = None, *, ended: bool = False, left: float | None = 1.0) -> None:
        self._code, self._ended, self._left = code, ended, left

    def code(self) -> Any:
        return self._code

    def done(self) -> bool:
        return self._ended

    def time_remaining(self) -> float | None:
        return self._left


def test_status_of_reads_the_code_the_client_will_see() -> None:
    assert status_of(FakeContext(), None) is grpc.StatusCode.OK
    assert status_of(FakeContext(grpc.StatusCode.NOT_FOUND), None) is grpc.StatusCode.NOT_FOUND
    assert status_of(FakeContext(5), grpc.aio.AbortError()) is grpc.StatusCode.NOT_FOUND  # by number
    assert status_of(FakeContext(), RuntimeError("bug")) is grpc.StatusCode.UNKNOWN
    assert status_of(FakeContext(), GeneratorExit()) is grpc.StatusCode.CANCELLED


def test_an_answer_too_late_to_send_has_the_code_the_core_sent() -> None:
    """A handler that aborts after its deadline: grpc fails to send (ExecuteBatchError), and
    the client already has DEADLINE_EXCEEDED from the core; the call was no server error."""
    too_late = RuntimeError('Failed "execute_batch"')
    assert status_of(FakeContext(ended=True, left=0), too_late) is grpc.StatusCode.DEADLINE_EXCEEDED
    assert status_of(FakeContext(ended=True, left=3.0), too_late) is grpc.StatusCode.CANCELLED
    assert status_of(FakeContext(ended=True, left=None), too_late) is grpc.StatusCode.CANCELLED


async def test_wrap_service_passes_an_unknown_method_through() -> None:
    async def nothing(details: grpc.HandlerCallDetails) -> None:
        return None

    details = SimpleNamespace(method=f"/{SERVICE}/Missing", invocation_metadata=())
    assert await wrap_service(nothing, details, RpcCache(), lambda rpc, context: FakeScope()) is None  # type: ignore[arg-type]


class FakeScope:
    def done(self, code: grpc.StatusCode) -> None:
        return None
