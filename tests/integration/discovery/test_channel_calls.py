"""MeshChannel against real in-process grpc.aio servers and a static endpoint list.

These pin what generated stubs rely on (all four call types, extra keywords, the endpoint
chosen per call), failover, fast UNAVAILABLE, wait-for-ready, draining, subsets and the
per-call-type interceptors on the per-endpoint channels.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import message_factory

from mesh.balancer.round_robin import RoundRobin
from mesh.channel import MeshChannel, mesh_channel
from mesh.registry.base import ServiceInstance
from mesh.registry.static import StaticDiscovery
from tests.integration.discovery.echo_server import CHAT, COUNT, ECHO, FAIL, JOIN, handlers
from tests.support.processes import free_port

Server = tuple[grpc.aio.Server, str]  # (server, "127.0.0.1:port")


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[grpc.aio.Server] = []

    async def start(label: str, delay: float = 0.0) -> Server:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handlers(label, delay),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return server, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        await server.stop(None)


async def settle() -> None:
    """Let the channel's watch task apply a StaticDiscovery change."""
    for _ in range(3):
        await asyncio.sleep(0)


async def wait_until_done(call: Any) -> None:
    for _ in range(100):
        if call.done():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("call did not end")


async def requests(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


async def test_all_four_call_types_work_as_generated_stubs_use_them(start_server: Any) -> None:
    _, a = await start_server("a")
    channel = mesh_channel("echo", StaticDiscovery({"echo": [a]}))
    # Stubs build their multicallables once, with serializers and _registered_method=True.
    echo = channel.unary_unary(
        ECHO, request_serializer=None, response_deserializer=None, _registered_method=True
    )
    count = channel.unary_stream(COUNT, _registered_method=True)
    join = channel.stream_unary(JOIN, _registered_method=True)
    chat = channel.stream_stream(CHAT, _registered_method=True, future_keyword="ignored")

    assert await echo(b"hi", timeout=5) == b"a|hi"
    assert [m async for m in count(b"3", timeout=5)] == [b"a|0", b"a|1", b"a|2"]
    assert await join(requests(b"x", b"y"), timeout=5) == b"a|x,y"
    assert [m async for m in chat(requests(b"p", b"q"), timeout=5)] == [b"a|p", b"a|q"]

    call = chat(timeout=5)
    await call.write(b"one")
    assert await call.read() == b"a|one"
    await call.done_writing()
    assert await call.read() is grpc.aio.EOF
    assert await call.code() is grpc.StatusCode.OK

    reader = count(b"2")
    assert await reader.read() == b"a|0"
    assert await reader.read() == b"a|1"
    assert await reader.read() is grpc.aio.EOF

    unary = echo(b"status")
    assert await unary == b"a|status"
    assert await unary == b"a|status"  # a second await returns the same response
    assert await unary.code() is grpc.StatusCode.OK
    assert unary.done() and not unary.cancelled()
    await channel.close()


async def test_the_endpoint_is_chosen_per_call_not_when_the_stub_is_built(start_server: Any) -> None:
    _, a = await start_server("a")
    _, b = await start_server("b")
    discovery = StaticDiscovery({"echo": [a]})
    channel = mesh_channel("echo", discovery)
    echo = channel.unary_unary(ECHO)
    assert await echo(b"") == b"a|"
    discovery.set("echo", [b])
    await settle()
    assert {await echo(b"") for _ in range(5)} == {b"b|"}
    await channel.close()


async def test_status_methods_work_without_awaiting_the_call(start_server: Any) -> None:
    _, a = await start_server("a")
    channel = mesh_channel("echo", StaticDiscovery({"echo": [a]}))
    call = channel.unary_unary(ECHO)(b"x")
    assert await call.code() is grpc.StatusCode.OK
    assert await call == b"a|x"
    stream = channel.unary_stream(COUNT)(b"2")
    assert await stream.code() is grpc.StatusCode.OK  # reads into a buffer ...
    assert [m async for m in stream] == [b"a|0", b"a|1"]  # ... that iteration then drains
    await channel.close()


async def test_nothing_to_pick_fails_fast_with_unavailable(start_server: Any) -> None:
    discovery = StaticDiscovery({"echo": []})
    for name in ("echo", "unknown"):
        channel = mesh_channel(name, discovery)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await channel.unary_unary(ECHO)(b"x", timeout=10)
        assert time.monotonic() - started < 0.5
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert raised.value.details() == f"no healthy endpoint for '{name}'"
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            await channel.stream_unary(JOIN)(requests(b"x"))
        assert streamed.value.details() == f"no healthy endpoint for '{name}'"
        await channel.close()


async def test_wait_for_ready_waits_for_an_endpoint_until_the_deadline(start_server: Any) -> None:
    _, a = await start_server("a")
    discovery = StaticDiscovery({"echo": []})
    channel = mesh_channel("echo", discovery)
    echo = channel.unary_unary(ECHO)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await echo(b"x", timeout=0.2, wait_for_ready=True)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED

    asyncio.get_running_loop().call_later(0.2, discovery.set, "echo", [a])
    started = time.monotonic()
    assert await echo(b"x", timeout=5, wait_for_ready=True) == b"a|x"
    assert 0.15 < time.monotonic() - started < 2
    await channel.close()


class Attempts:
    """Per-endpoint client interceptors, one class per call type, counting attempts by method."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()

    def interceptors(self) -> list[Any]:
        attempts = self

        class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
            async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
                attempts.count[details.method] += 1
                return await continuation(details, request)

        class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
            async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
                attempts.count[details.method] += 1
                return await continuation(details, request)

        class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
            async def intercept_stream_unary(self, continuation: Any, details: Any, iterator: Any) -> Any:
                attempts.count[details.method] += 1
                return await continuation(details, iterator)

        class StreamStream(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
            async def intercept_stream_stream(self, continuation: Any, details: Any, iterator: Any) -> Any:
                attempts.count[details.method] += 1
                return await continuation(details, iterator)

        return [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]


async def test_interceptors_of_each_call_type_run_on_the_endpoint_channels(start_server: Any) -> None:
    _, a = await start_server("a")
    attempts = Attempts()
    channel = mesh_channel("echo", StaticDiscovery({"echo": [a]}), interceptors=attempts.interceptors())
    await channel.unary_unary(ECHO)(b"x")
    assert [m async for m in channel.unary_stream(COUNT)(b"1")] == [b"a|0"]
    await channel.stream_unary(JOIN)(requests(b"x"))
    assert [m async for m in channel.stream_stream(CHAT)(requests(b"x"))] == [b"a|x"]
    seen = {m.decode() if isinstance(m, bytes) else m for m in attempts.count}
    assert seen == {ECHO, COUNT, JOIN, CHAT}
    await channel.close()


async def test_refused_connections_fail_over_to_another_endpoint(start_server: Any) -> None:
    _, a = await start_server("a")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    attempts = Attempts()
    channel = mesh_channel(
        "echo",
        StaticDiscovery({"echo": [dead, a]}),
        balancer=RoundRobin(),
        interceptors=attempts.interceptors(),
    )
    for _ in range(20):
        assert await channel.unary_unary(ECHO)(b"x", timeout=5) == b"a|x"
        assert [m async for m in channel.unary_stream(COUNT)(b"1", timeout=5)] == [b"a|0"]
    await channel.close()


async def test_an_application_unavailable_is_not_retried(start_server: Any) -> None:
    _, a = await start_server("a")
    _, b = await start_server("b")
    attempts = Attempts()
    channel = mesh_channel("echo", StaticDiscovery({"echo": [a, b]}), interceptors=attempts.interceptors())
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(FAIL)(b"UNAVAILABLE", timeout=5)
    assert raised.value.details() == "asked to fail with UNAVAILABLE"
    assert sum(attempts.count.values()) == 1
    await channel.close()


async def test_failover_gives_up_when_every_endpoint_refuses() -> None:
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    channel = mesh_channel("echo", StaticDiscovery({"echo": dead}))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(ECHO)(b"x", timeout=5)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "no healthy endpoint" not in (raised.value.details() or "")
    await channel.close()


async def test_calls_in_flight_on_a_removed_endpoint_finish(start_server: Any) -> None:
    _, slow = await start_server("slow", delay=0.5)
    _, fast = await start_server("fast")
    discovery = StaticDiscovery({"echo": [slow]})
    channel = mesh_channel("echo", discovery)
    echo = channel.unary_unary(ECHO)
    in_flight = asyncio.ensure_future(echo(b"x", timeout=5))
    await asyncio.sleep(0.1)
    discovery.set("echo", [fast])
    await settle()
    assert [e.target for e in channel.endpoints] == [fast]
    assert await echo(b"y") == b"fast|y"
    assert await in_flight == b"slow|x"
    await channel.close()


async def test_a_tag_subset_only_reaches_tagged_instances(start_server: Any) -> None:
    _, a = await start_server("v1")
    _, b = await start_server("v2")
    instances = [
        ServiceInstance.from_target("echo", a, tags=("v1",)),
        ServiceInstance.from_target("echo", b, tags=("v2",)),
    ]
    channel = mesh_channel("echo", StaticDiscovery({"echo": instances}), tags=("v2",))
    assert {await channel.unary_unary(ECHO)(b"") for _ in range(10)} == {b"v2|"}
    await channel.close()


async def test_cancelling_a_call_cancels_the_attempt(start_server: Any) -> None:
    _, slow = await start_server("slow", delay=5)
    channel = mesh_channel("echo", StaticDiscovery({"echo": [slow]}))
    task = asyncio.ensure_future(channel.unary_unary(ECHO)(b"x"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    call = channel.unary_unary(ECHO)(b"x")
    asyncio.get_running_loop().call_later(0.1, call.cancel)
    assert await call.code() is grpc.StatusCode.CANCELLED
    assert call.cancelled()
    await channel.close()


async def test_close_closes_every_endpoint_channel(start_server: Any) -> None:
    _, a = await start_server("a")
    channel = MeshChannel("echo", StaticDiscovery({"echo": [a]}))
    assert await channel.unary_unary(ECHO)(b"") == b"a|"
    assert channel.get_state() is grpc.ChannelConnectivity.READY
    await channel.close()
    assert channel.endpoints == ()
    with pytest.raises(grpc.aio.UsageError):
        channel.unary_unary(ECHO)(b"")


class AnswerEverything(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Answers any method with empty messages (an empty message parses as any proto message).

    ``kinds`` maps a method path to (client_streaming, server_streaming); streaming answers
    carry two messages.
    """

    def __init__(self, kinds: dict[str, tuple[bool, bool]]) -> None:
        self.kinds = kinds
        self.methods: list[str] = []

    def service(self, details: Any) -> Any:
        self.methods.append(details.method)
        client_streaming, server_streaming = self.kinds[details.method]

        async def unary(request: Any, context: Any) -> bytes:
            if client_streaming:
                [r async for r in request]
            return b""

        async def stream(request: Any, context: Any) -> AsyncIterator[bytes]:
            if client_streaming:
                [r async for r in request]
            for _ in range(2):
                yield b""

        if client_streaming:
            factory = (
                grpc.stream_stream_rpc_method_handler
                if server_streaming
                else grpc.stream_unary_rpc_method_handler
            )
        else:
            factory = (
                grpc.unary_stream_rpc_method_handler
                if server_streaming
                else grpc.unary_unary_rpc_method_handler
            )
        return factory(stream if server_streaming else unary)


@pytest.mark.parametrize("service", ["inventory", "order", "payment", "shipping", "user"])
async def test_generated_stubs_of_the_shop_work_unchanged(service: str) -> None:
    pb2 = importlib.import_module(f"shop.{service}.v1.{service}_pb2")
    pb2_grpc = importlib.import_module(f"shop.{service}.v1.{service}_pb2_grpc")
    (descriptor,) = pb2.DESCRIPTOR.services_by_name.values()
    stub_class = getattr(pb2_grpc, f"{descriptor.name}Stub")
    paths = {m.name: f"/{descriptor.full_name}/{m.name}" for m in descriptor.methods}

    answer = AnswerEverything(
        {paths[m.name]: (m.client_streaming, m.server_streaming) for m in descriptor.methods}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((answer,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = mesh_channel(service, StaticDiscovery({service: [f"127.0.0.1:{port}"]}))
    try:
        stub = stub_class(channel)
        for method in descriptor.methods:
            request = message_factory.GetMessageClass(method.input_type)()
            call = getattr(stub, method.name)
            if method.client_streaming:

                async def one(request: Any = request) -> AsyncIterator[Any]:
                    yield request

                invocation = call(one(), timeout=5)
            else:
                invocation = call(request, timeout=5)
            if method.server_streaming:
                responses = [r async for r in invocation]
                assert len(responses) == 2
            else:
                responses = [await invocation]
            assert all(r.DESCRIPTOR is method.output_type for r in responses)
        assert answer.methods == list(paths.values())
    finally:
        await channel.close()
        await server.stop(None)


async def test_leaving_a_stream_early_ends_the_call_and_frees_the_endpoint(start_server: Any) -> None:
    _, a = await start_server("a")
    channel = mesh_channel("echo", StaticDiscovery({"echo": [a]}), outlier=None)
    call = channel.unary_stream(COUNT)(b"100", timeout=5)
    async for message in call:
        assert message == b"a|0"
        break
    # Python closes an abandoned async iterator from the loop, soon after the break.
    await wait_until_done(call)
    assert call.cancelled()
    assert channel.balancer.outstanding(channel.endpoints[0]) == 0  # type: ignore[attr-defined]
    await channel.close()
