"""The MeshChannel's own telemetry: a span per call and per retried attempt, client and mesh_* metrics.

Real grpc.aio servers on 127.0.0.1 record the ``traceparent`` each attempt carried, so the
assertions tie every attempt span to what reached the network.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from mesh.balancer.outlier import OutlierPolicy
from mesh.channel import MeshChannel, mesh_channel
from mesh.observer import CallObserver
from mesh.registry import StaticDiscovery
from mesh.resilience import State, parse_policy
from mesh.telemetry import client_observers
from mesh.tracing.client import ATTEMPT_ATTRIBUTE
from shop.inventory.v1 import inventory_pb2 as inv

SERVICE = "shop.inventory.v1.InventoryService"
GET = f"/{SERVICE}/ReserveStock"  # retried when the request carries its idempotency key
STREAM = f"/{SERVICE}/CommitStock"
BIDI = f"/{SERVICE}/ListProducts"
RETRY = {"retry": {"max_attempts": 3, "initial_backoff": 0.001, "max_backoff": 0.002}}
Behaviour = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]


async def ok(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    return None


async def unavailable(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "injected")


class Backend:
    """A loopback server recording the trace context every call arrived with."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.received: list[list[tuple[str, str]]] = []  # trace keys of each call, in order
        self.server = grpc.aio.server()
        handlers = {
            "ReserveStock": grpc.unary_unary_rpc_method_handler(self._unary),
            "CommitStock": grpc.unary_stream_rpc_method_handler(self._stream),
            "ListProducts": grpc.stream_stream_rpc_method_handler(self._bidi),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _record(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        keys = ("traceparent", "tracestate")
        self.received.append([(k, v) for k, v in context.invocation_metadata() or () if k in keys])

    async def _unary(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self._record(context)
        await self.behaviour(context)
        return b""

    async def _stream(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        self._record(context)
        await self.behaviour(context)
        yield b"a"
        yield b"b"

    async def _bidi(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        self._record(context)
        async for item in requests:
            yield item

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


class Rig:
    def __init__(self, sampler: Sampler | None = None) -> None:
        self.spans = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=sampler)
        self.provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.registry = CollectorRegistry()
        self.observers: list[CallObserver] = client_observers(self.registry, self.provider)
        self.backends: list[Backend] = []

    async def start(self, *behaviours: Behaviour) -> list[Backend]:
        made = [Backend(b) for b in behaviours]
        for backend in made:
            await backend.server.start()
        self.backends.extend(made)
        return made

    def channel(self, backends: list[Backend], policy: dict[str, Any] | None = None) -> MeshChannel:
        discovery = StaticDiscovery({"inventory": [b.target for b in backends]})
        settings = parse_policy({"services": {"inventory": policy}} if policy else {})
        return mesh_channel(
            "inventory",
            discovery,
            policy=settings,
            balancer="round_robin",
            outlier=None,
            observers=self.observers,
        )

    def calls(self) -> list[ReadableSpan]:
        """The calls' spans: client spans whose parent is not a client span (not an attempt)."""
        client = [s for s in self.spans.get_finished_spans() if s.kind == SpanKind.CLIENT]
        ids = {s.context.span_id for s in client if s.context is not None}
        return [s for s in client if s.parent is None or s.parent.span_id not in ids]

    def attempts_of(self, call: ReadableSpan) -> list[ReadableSpan]:
        """A retried call's attempt spans; a one-attempt call is its own attempt span."""
        assert call.context is not None
        if ATTEMPT_ATTRIBUTE in (call.attributes or {}):
            return [call]
        children = [
            s
            for s in self.spans.get_finished_spans()
            if s.parent is not None and s.parent.span_id == call.context.span_id
        ]
        assert len(children) >= 2, "a call span with attempt children had more than one attempt"
        return sorted(children, key=lambda s: (s.attributes or {})[ATTEMPT_ATTRIBUTE])

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    made = Rig()
    yield made
    for backend in made.backends:
        await backend.server.stop(None)
    made.provider.shutdown()


def get(channel: MeshChannel) -> Callable[..., Any]:
    return channel.unary_unary(GET, inv.ReserveStockRequest.SerializeToString, lambda raw: raw)


def traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-01"


async def test_one_attempt_call_is_one_span_sent_as_the_traceparent(rig: Rig) -> None:
    (good,) = await rig.start(ok)
    async with rig.channel([good]) as channel:
        await get(channel)(inv.ReserveStockRequest(request_id="x"), timeout=5)
    (span,) = rig.spans.get_finished_spans()
    assert span.kind == SpanKind.CLIENT and span.name == f"{SERVICE}/ReserveStock" and span.parent is None
    assert span.status.status_code == StatusCode.UNSET
    assert span.attributes is not None
    assert span.attributes[ATTEMPT_ATTRIBUTE] == 1 and span.attributes["rpc.grpc.status_code"] == 0
    assert span.attributes["rpc.service"] == SERVICE and span.attributes["rpc.method"] == "ReserveStock"
    assert span.attributes["server.address"] == "127.0.0.1" and span.attributes["server.port"] == good.port
    assert good.received == [[("traceparent", traceparent_of(span))]]


CALLER = "0af7651916cd43dd8448eb211c80319c"


@pytest.mark.parametrize(
    ("sampler", "caller_flags", "recorded", "sent_flags"),
    [
        # the SDK's own samplers are decided inline: pinned against what they decide
        (DEFAULT_ON, None, True, "01"),
        (DEFAULT_ON, "01", True, "01"),
        (DEFAULT_ON, "00", False, "00"),
        (ALWAYS_ON, "00", True, "01"),
        (ALWAYS_OFF, None, False, "00"),
        # any other sampler is asked
        (TraceIdRatioBased(1.0), "00", True, "01"),
        (ParentBased(TraceIdRatioBased(0.0)), None, False, "00"),
        (ParentBased(TraceIdRatioBased(0.0)), "01", True, "01"),
    ],
)
async def test_the_providers_sampler_decides_and_the_decision_travels(
    sampler: Sampler, caller_flags: str | None, recorded: bool, sent_flags: str
) -> None:
    rig = Rig(sampler)
    (good,) = await rig.start(ok)
    metadata = (
        None if caller_flags is None else (("traceparent", f"00-{CALLER}-b7ad6b7169203331-{caller_flags}"),)
    )
    try:
        async with rig.channel([good]) as channel:
            await get(channel)(inv.ReserveStockRequest(request_id="x"), metadata=metadata, timeout=5)
    finally:
        await good.server.stop(None)
        rig.provider.shutdown()
    ((key, sent),) = good.received[0]
    assert key == "traceparent"
    _, trace_id, _, flags = sent.split("-")
    assert flags == sent_flags
    if caller_flags is not None:
        assert trace_id == CALLER  # the caller's trace continues, sampled or not
    spans = rig.spans.get_finished_spans()
    assert len(spans) == int(recorded)
    if recorded:
        assert sent == traceparent_of(spans[0])


async def test_retried_call_has_one_span_per_attempt_each_sent_as_traceparent(rig: Rig) -> None:
    bad, good = await rig.start(unavailable, ok)
    tracer = rig.provider.get_tracer("test")
    async with rig.channel([bad, good], RETRY) as channel:
        with tracer.start_as_current_span("handler") as handler:
            for n in range(6):
                await get(channel)(inv.ReserveStockRequest(request_id=f"s{n}"), timeout=5)

    calls = rig.calls()
    calls = [c for c in calls if c.name != "handler"]
    assert len(calls) == 6
    sent = {tp for backend in (bad, good) for keys in backend.received for k, tp in keys}
    retried = 0
    for call in calls:
        assert call.kind == SpanKind.CLIENT and call.name == f"{SERVICE}/ReserveStock"
        assert call.parent is not None and call.parent.span_id == handler.get_span_context().span_id
        assert call.attributes is not None and call.attributes["rpc.grpc.status_code"] == 0
        attempts = rig.attempts_of(call)
        numbers = [(a.attributes or {})[ATTEMPT_ATTRIBUTE] for a in attempts]
        assert numbers == list(range(1, len(attempts) + 1))
        assert all(a.context is not None and call.context is not None for a in attempts)
        assert all(a.context.trace_id == call.context.trace_id for a in attempts)  # type: ignore[union-attr]
        call_span_of_its_own = ATTEMPT_ATTRIBUTE not in (call.attributes or {})
        assert call_span_of_its_own == (len(attempts) > 1)  # only a retried call has attempt children
        *failed, last = attempts
        assert (last.attributes or {})["rpc.grpc.status_code"] == 0
        assert (last.attributes or {})["server.address"] == "127.0.0.1"
        assert (last.attributes or {})["server.port"] == good.port
        for attempt in failed:
            assert (attempt.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
            assert (attempt.attributes or {})["server.port"] == bad.port
            assert attempt.status.status_code == StatusCode.ERROR
        for attempt in attempts:
            assert traceparent_of(attempt) in sent  # what that attempt carried on the wire
        retried += bool(failed)
    assert retried == len(bad.received) and retried >= 2  # round robin sends every other first try there
    for backend in (bad, good):
        assert all(len(keys) == 1 for keys in backend.received)  # exactly one traceparent per attempt


async def test_client_metrics_count_every_attempt_on_the_wire(rig: Rig) -> None:
    bad, good = await rig.start(unavailable, ok)
    async with rig.channel([bad, good], RETRY) as channel:
        for n in range(6):
            await get(channel)(inv.ReserveStockRequest(request_id=f"s{n}"), timeout=5)
        assert rig.sample("mesh_client_retries_total", target_service="inventory") == len(bad.received)
    labels = {"grpc_service": SERVICE, "grpc_method": "ReserveStock", "grpc_type": "unary"}
    assert rig.sample("grpc_client_handled_total", **labels, grpc_code="OK") == 6
    assert rig.sample("grpc_client_handled_total", **labels, grpc_code="UNAVAILABLE") == len(bad.received)
    assert rig.sample("grpc_client_started_total", **labels) == 6 + len(bad.received)
    assert rig.sample("grpc_client_in_flight_calls", **labels) == 0
    assert rig.sample("grpc_client_handling_seconds_count", **labels) == 6 + len(bad.received)


async def test_failed_call_ends_its_span_with_the_error(rig: Rig) -> None:
    (bad,) = await rig.start(unavailable)
    async with rig.channel([bad], RETRY) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await get(channel)(inv.ReserveStockRequest(request_id="x"), timeout=5)
    (call,) = rig.calls()
    assert call.status.status_code == StatusCode.ERROR
    assert (call.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert [(a.attributes or {})[ATTEMPT_ATTRIBUTE] for a in rig.attempts_of(call)] == [1, 2, 3]
    assert len(bad.received) == 3


async def test_untraced_caller_metadata_is_the_parent_and_is_replaced_on_the_wire(rig: Rig) -> None:
    (good,) = await rig.start(ok)
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with rig.channel([good]) as channel:
        await get(channel)(
            inv.ReserveStockRequest(request_id="x"), metadata=(("traceparent", given),), timeout=5
        )
    (call,) = rig.calls()
    assert call.parent is not None and call.parent.span_id == 0xB7AD6B7169203331
    assert call.context is not None and call.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    (attempt,) = rig.attempts_of(call)
    assert good.received == [[("traceparent", traceparent_of(attempt))]]


async def test_server_stream_span_ends_when_the_stream_ends(rig: Rig) -> None:
    (good,) = await rig.start(ok)
    async with rig.channel([good]) as channel:
        call = channel.unary_stream(STREAM, inv.ReserveStockRequest.SerializeToString, lambda raw: raw)(
            inv.ReserveStockRequest(request_id="x"), timeout=5
        )
        assert await call.read() == b"a"
        assert rig.calls() == []  # the stream is still open
        assert await call.read() == b"b"
        assert await call.read() is grpc.aio.EOF
    (span,) = rig.calls()
    (attempt,) = rig.attempts_of(span)
    assert (span.attributes or {})["rpc.grpc.status_code"] == 0
    assert good.received == [[("traceparent", traceparent_of(attempt))]]


async def test_bidi_stream_gets_one_span_for_its_one_attempt(rig: Rig) -> None:
    (good,) = await rig.start(ok)

    async def items() -> AsyncIterator[bytes]:
        yield b"x"
        yield b"y"

    async with rig.channel([good]) as channel:
        call = channel.stream_stream(BIDI)(items(), timeout=5)
        assert [item async for item in call] == [b"x", b"y"]
        assert await call.code() == grpc.StatusCode.OK
        # The stream-request call learns its status from a done callback: poll, bounded.
        for _ in range(200):
            if rig.calls():
                break
            await asyncio.sleep(0.01)
    (span,) = rig.calls()
    assert span.name == f"{SERVICE}/ListProducts"
    (attempt,) = rig.attempts_of(span)
    assert good.received == [[("traceparent", traceparent_of(attempt))]]


async def test_health_checks_get_no_spans_but_are_counted(rig: Rig) -> None:
    (good,) = await rig.start(ok)
    async with rig.channel([good]) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            health_pb2.HealthCheckRequest.SerializeToString,
            health_pb2.HealthCheckResponse.FromString,
        )
        response = await check(health_pb2.HealthCheckRequest(), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING
    assert rig.spans.get_finished_spans() == ()
    labels = {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check", "grpc_type": "unary"}
    assert rig.sample("grpc_client_handled_total", **labels, grpc_code="OK") == 1


async def test_breaker_state_and_transitions_are_exported(rig: Rig) -> None:
    (bad,) = await rig.start(unavailable)
    policy = {"breaker": {"consecutive_failures": 2, "open_wait": 30.0}}
    async with rig.channel([bad], policy) as channel:
        endpoint = {"target_service": "inventory", "endpoint": bad.target}
        service = {"target_service": "inventory", "endpoint": ""}
        assert rig.sample("mesh_endpoints", target_service="inventory") == 0  # not started yet
        for _ in range(2):
            assert rig.sample("mesh_circuit_breaker_state", **service) == 0
            with pytest.raises(grpc.aio.AioRpcError):
                await get(channel)(inv.ReserveStockRequest(request_id="x"), timeout=5)
        assert rig.sample("mesh_circuit_breaker_state", **endpoint) == 2  # open
        assert rig.sample("mesh_circuit_breaker_state", **service) == 2
        for scope in ("endpoint", "service"):
            labels = {
                "target_service": "inventory",
                "scope": scope,
                "from_state": "closed",
                "to_state": "open",
            }
            assert rig.sample("mesh_circuit_breaker_transitions_total", **labels) == 1
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await get(channel)(inv.ReserveStockRequest(request_id="x"), timeout=5)
        assert "circuit open" in str(refused.value.details())
        assert rig.sample("mesh_client_fail_fast_total", target_service="inventory") == 1
        assert rig.sample("mesh_endpoints", target_service="inventory") == 1
    assert len(bad.received) == 2  # the refused call never reached it
    assert rig.sample("mesh_endpoints", target_service="inventory") == 0  # closed: no longer exported
    *tried, refused_span = sorted(rig.spans.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert [(s.attributes or {}).get(ATTEMPT_ATTRIBUTE) for s in tried] == [1, 1]
    # refused before any attempt: the call's span alone, with its code and no attempt or endpoint
    assert refused_span.attributes is not None and ATTEMPT_ATTRIBUTE not in refused_span.attributes
    assert "server.port" not in refused_span.attributes
    assert refused_span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]


async def test_breakers_of_endpoints_that_left_are_forgotten(rig: Rig) -> None:
    bad, good = await rig.start(unavailable, ok)
    discovery = StaticDiscovery({"inventory": [bad.target, good.target]})
    policy = parse_policy({"services": {"inventory": {"breaker": {"consecutive_failures": 1}}}})
    async with mesh_channel("inventory", discovery, policy=policy, outlier=None) as channel:
        await channel.wait_for_endpoints(2, within=5)
        for _ in range(20):  # until P2C has sent a call to it (its breaker opens at once)
            if bad.target in channel.resilience.endpoint_states():
                break
            with contextlib.suppress(grpc.aio.AioRpcError):
                await get(channel)(inv.ReserveStockRequest(request_id="x"), timeout=5)
        assert channel.resilience.endpoint_states()[bad.target] is State.OPEN
        discovery.set("inventory", [good.target])
        for _ in range(200):  # the channel applies the change on its own task: poll, bounded
            if len(channel.endpoints) == 1:
                break
            await asyncio.sleep(0.01)
        assert set(channel.resilience.endpoint_states()) <= {good.target}
        assert channel.resilience.blocked() == set()
        discovery.set("inventory", [bad.target, good.target])  # it returns: a fresh breaker
        await channel.wait_for_endpoints(2, within=5)
        assert channel.resilience.endpoint_breaker(bad.target).state is State.CLOSED


async def test_outlier_ejections_are_exported(rig: Rig) -> None:
    bad, good = await rig.start(unavailable, ok)
    discovery = StaticDiscovery({"inventory": [bad.target, good.target]})
    outlier = OutlierPolicy(consecutive_failures=2, max_ejected_share=0.5)
    async with mesh_channel(
        "inventory", discovery, balancer="p2c", outlier=outlier, observers=rig.observers
    ) as channel:
        for _ in range(40):
            if rig.sample("mesh_outlier_ejections_total", target_service="inventory"):
                break
            with contextlib.suppress(grpc.aio.AioRpcError):
                await get(channel)(inv.ReserveStockRequest(request_id="x"), timeout=5)
        assert rig.sample("mesh_outlier_ejections_total", target_service="inventory") == 1
        assert rig.sample("mesh_outlier_ejected_endpoints", target_service="inventory") == 1
        in_flight = {"target_service": "inventory", "endpoint": good.target}
        assert rig.registry.get_sample_value("mesh_endpoint_in_flight_calls", in_flight) == 0
