"""The server interceptor stack MeshServer builds: deadline -> tracing -> metrics -> log -> status.

Pinned twice: by inspecting the list MeshServer hands grpc.aio, and by observing a call pass
through recording layers put in each slot, since the order is what makes the telemetry right
(the status layer innermost, so the others record the code the client gets).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from mesh.config import ServerSettings
from mesh.deadline import remaining
from mesh.rpc import Rpc, RpcCache
from mesh.server import HostedService, MeshServer, ServerTelemetry
from mesh.server.deadline import DeadlineInterceptor
from mesh.server.wrap import Context, Continuation, wrap_handler
from tests.support.waiting import wait_until

SERVICE = "test.Stack"
Events = list[tuple[str, object]]


class Recording(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A telemetry-like layer: records its start (with the deadline it sees) and the code it ends with."""

    def __init__(self, name: str, events: Events) -> None:
        self.name = name
        self._events = events
        self._rpcs = RpcCache()

    def _start(self, rpc: Rpc, context: Context) -> Recording:
        self._events.append((self.name, remaining() is not None))
        return self

    def done(self, code: grpc.StatusCode) -> None:
        self._events.append((f"{self.name} done", code))

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return self.wrap_handler(handler_call_details.method, await continuation(handler_call_details))

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        return wrap_handler(method, handler, self._rpcs, self._start)


class LookupToNotFound(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """A status layer as an application writes one: a raised LookupError becomes NOT_FOUND."""

    def __init__(self, events: Events) -> None:
        self._events = events

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return self.wrap_handler(handler_call_details.method, await continuation(handler_call_details))

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        behaviour: Callable[[bytes, Any], Awaitable[bytes]] = handler.unary_unary
        events = self._events

        async def mapped(request: bytes, context: Any) -> bytes:
            events.append(("status", remaining() is not None))
            try:
                return await behaviour(request, context)
            except LookupError as error:
                await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
                raise

        return grpc.unary_unary_rpc_method_handler(mapped)


async def find(request: bytes, context: Any) -> bytes:
    if request == b"missing":
        raise LookupError("no such thing")
    return request


def register(server: grpc.aio.Server) -> None:
    handlers = {"Find": grpc.unary_unary_rpc_method_handler(find)}
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])


def test_the_stack_is_deadline_tracing_metrics_log_status() -> None:
    events: Events = []
    tracing, metrics, log = (Recording(name, events) for name in ("tracing", "metrics", "log"))
    status = LookupToNotFound(events)
    server = MeshServer(
        ServerSettings("stack", 0),
        [],
        telemetry=ServerTelemetry(tracing=tracing, metrics=metrics, log=log),
        status=status,
    )
    deadline, *rest = server.interceptor_stack()
    assert isinstance(deadline, DeadlineInterceptor)
    assert rest == [tracing, metrics, log, status]


def test_layers_that_are_off_leave_no_gap() -> None:
    events: Events = []
    metrics = Recording("metrics", events)
    server = MeshServer(ServerSettings("stack", 0), [], telemetry=ServerTelemetry(metrics=metrics))
    deadline, *rest = server.interceptor_stack()
    assert isinstance(deadline, DeadlineInterceptor)
    assert rest == [metrics]
    assert [type(i) for i in MeshServer(ServerSettings("bare", 0), []).interceptor_stack()] == [
        DeadlineInterceptor
    ]


@pytest.fixture
async def stack() -> AsyncIterator[tuple[grpc.aio.Channel, Events]]:
    events: Events = []
    server = MeshServer(
        ServerSettings("stack", 0),
        [HostedService(SERVICE, register)],
        telemetry=ServerTelemetry(*(Recording(name, events) for name in ("tracing", "metrics", "log"))),
        status=LookupToNotFound(events),
    )
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, events
    finally:
        await channel.close()
        await server.stop(0)


async def test_a_call_passes_the_layers_in_order_under_its_deadline(
    stack: tuple[grpc.aio.Channel, Events],
) -> None:
    channel, events = stack
    assert await channel.unary_unary(f"/{SERVICE}/Find")(b"here", timeout=5) == b"here"
    ok = grpc.StatusCode.OK
    await wait_until(lambda: len(events) == 7, within=5, what="every layer recorded its end")
    assert events == [
        ("tracing", True),  # the deadline layer is outside every other one
        ("metrics", True),
        ("log", True),
        ("status", True),
        ("log done", ok),
        ("metrics done", ok),
        ("tracing done", ok),
    ]


async def test_telemetry_records_the_code_the_status_layer_gives(
    stack: tuple[grpc.aio.Channel, Events],
) -> None:
    channel, events = stack
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await channel.unary_unary(f"/{SERVICE}/Find")(b"missing")
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND

    def ended_layers() -> list[tuple[str, grpc.StatusCode]]:
        return [(name, code) for name, code in events if name.endswith(" done")]

    # The layers finish after the status is on its way: on a loaded machine the client can
    # read it before the server's last layer has recorded its end.
    await wait_until(lambda: len(ended_layers()) == 3, within=5, what="every layer recorded its end")
    assert ended_layers() == [
        (f"{name} done", grpc.StatusCode.NOT_FOUND) for name in ("log", "metrics", "tracing")
    ]
    assert ("tracing", False) in events  # no deadline sent, none published


class CountingWraps(Recording):
    """A recording layer that also counts how often it is asked to wrap a handler."""

    def __init__(self, name: str, events: Events) -> None:
        super().__init__(name, events)
        self.wraps = 0

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        self.wraps += 1
        return super().wrap_handler(method, handler)


async def test_the_stack_wraps_each_method_once_not_on_every_call() -> None:
    events: Events = []
    metrics = CountingWraps("metrics", events)
    server = MeshServer(
        ServerSettings("stack", 0),
        [HostedService(SERVICE, register)],
        telemetry=ServerTelemetry(metrics=metrics),
    )
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        find = channel.unary_unary(f"/{SERVICE}/Find")
        assert await find(b"one", timeout=5) == b"one"
        wrapped_after_one_call = metrics.wraps
        for _ in range(5):
            assert await find(b"again", timeout=5) == b"again"
        assert metrics.wraps == wrapped_after_one_call
        assert [name for name, _ in events].count("metrics") == 6  # yet every call was seen
    finally:
        await channel.close()
        await server.stop(0)


class ScopedRecording(Recording):
    """A recording layer that only scopes calls: MeshServer applies such layers as one wrapper."""

    def scope_for(self, method: str) -> Any:
        return self._start


class FailingToOpen(ScopedRecording):
    """A scope layer whose start raises, as a broken layer would."""

    def _start(self, rpc: Rpc, context: Context) -> Recording:
        self._events.append((self.name, "raised"))
        raise RuntimeError("this layer cannot open its scope")


async def run_stack(layers: ServerTelemetry, request: bytes) -> tuple[grpc.StatusCode, Events]:
    events = layers.tracing._events  # type: ignore[union-attr]
    server = MeshServer(
        ServerSettings("stack", 0),
        [HostedService(SERVICE, register)],
        telemetry=layers,
        status=LookupToNotFound(events),
    )
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                await channel.unary_unary(f"/{SERVICE}/Find")(request, timeout=5)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
        return code, events
    finally:
        await server.stop(0)


async def test_scope_layers_in_one_wrapper_open_and_close_as_nested_ones_do() -> None:
    events: Events = []
    layers = ServerTelemetry(*(ScopedRecording(name, events) for name in ("tracing", "metrics", "log")))
    code, _ = await run_stack(layers, b"here")
    assert code is grpc.StatusCode.OK
    await wait_until(lambda: len(events) == 7, within=5, what="every layer recorded its end")
    ok = grpc.StatusCode.OK
    assert events == [
        ("tracing", True),
        ("metrics", True),
        ("log", True),
        ("status", True),
        ("log done", ok),
        ("metrics done", ok),
        ("tracing done", ok),
    ]
    events.clear()
    code, _ = await run_stack(layers, b"missing")
    assert code is grpc.StatusCode.NOT_FOUND
    await wait_until(lambda: len(events) == 7, within=5, what="every layer recorded its end")
    assert [e for e in events if e[0].endswith(" done")] == [
        (f"{name} done", grpc.StatusCode.NOT_FOUND) for name in ("log", "metrics", "tracing")
    ]


async def test_a_scope_that_cannot_open_closes_the_ones_already_open() -> None:
    events: Events = []
    layers = ServerTelemetry(
        tracing=ScopedRecording("tracing", events),
        metrics=FailingToOpen("metrics", events),
        log=ScopedRecording("log", events),
    )
    code, _ = await run_stack(layers, b"here")
    assert code is grpc.StatusCode.UNKNOWN
    await wait_until(
        lambda: ("tracing done", grpc.StatusCode.UNKNOWN) in events, within=5, what="tracing closed"
    )
    assert events == [("tracing", True), ("metrics", "raised"), ("tracing done", grpc.StatusCode.UNKNOWN)]


def test_the_mesh_layers_are_scope_layers() -> None:
    """Deadline, tracing, metrics and the RPC log scope calls, so they share one wrapper."""
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from mesh.logs.server import RpcLogServerInterceptor
    from mesh.metrics.families import rpc_families
    from mesh.metrics.server import MetricsServerInterceptor
    from mesh.tracing.server import TracingServerInterceptor

    layers = [
        DeadlineInterceptor(),
        TracingServerInterceptor(TracerProvider().get_tracer("t")),
        MetricsServerInterceptor(rpc_families(CollectorRegistry(), "server")),
        RpcLogServerInterceptor(),
    ]
    for layer in layers:
        assert layer.scope_for(f"/{SERVICE}/Find") is not None
    health = "/grpc.health.v1.Health/Check"  # tracing and the log leave health checks alone
    assert [layer.scope_for(health) is not None for layer in layers] == [True, False, True, False]
