"""Retries, breakers and deadlines of the MeshChannel against in-process loopback servers.

Each backend is a real grpc.aio server on 127.0.0.1 that records every attempt it receives
(with its ``x-mesh-attempt``), so assertions count what reached the network.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

from mesh.channel.resilience import method_idempotent
from mesh.deadline import Deadline, deadline_scope, detached
from mesh.resilience import State
from shop.inventory.v1 import inventory_pb2 as inv
from tests.support.loopback import RESERVE, SERVICE, channel_to, ok, reserve, unavailable
from tests.support.loopback import backends as backends  # the fixture

RETRY = {"retry": {"max_attempts": 3, "initial_backoff": 0.001, "max_backoff": 0.002}}


async def test_retry_moves_to_another_endpoint(backends: Any) -> None:
    bad, good = await backends(unavailable, ok)
    async with channel_to([bad, good], RETRY) as channel:
        call = reserve(channel)
        for n in range(40):
            await call(inv.ReserveStockRequest(request_id=f"r{n}"), timeout=5)
    assert len(bad.attempts) > 0 and set(bad.attempts) == {1}  # a retry never went back to it
    assert good.attempts.count(2) == len(bad.attempts)
    assert channel.resilience.retries == len(bad.attempts)


async def test_no_retry_without_idempotency_key(backends: Any) -> None:
    (bad,) = await backends(unavailable)
    async with channel_to([bad], RETRY) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await reserve(channel)(inv.ReserveStockRequest(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert bad.attempts == [1]


async def test_retries_are_off_unless_configured(backends: Any) -> None:
    (bad,) = await backends(unavailable)
    async with channel_to([bad]) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await reserve(channel)(inv.ReserveStockRequest(request_id="x"), timeout=5)
    assert bad.attempts == [1]


async def test_single_endpoint_is_retried_when_no_other_exists(backends: Any) -> None:
    (bad,) = await backends(unavailable)
    async with channel_to([bad], RETRY) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await reserve(channel)(inv.ReserveStockRequest(request_id="x"), timeout=5)
    assert bad.attempts == [1, 2, 3]


async def test_negative_pushback_stops_retries_and_positive_one_is_waited(backends: Any) -> None:
    pushback = {"value": "-1"}

    async def push(context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        context.set_trailing_metadata((("grpc-retry-pushback-ms", pushback["value"]),))
        await context.abort(grpc.StatusCode.UNAVAILABLE, "busy")
        raise AssertionError

    (server,) = await backends(push)
    async with channel_to([server], RETRY) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await reserve(channel)(inv.ReserveStockRequest(request_id="x"), timeout=5)
        assert server.attempts == [1]
        pushback["value"] = "300"
        began = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError):
            await reserve(channel)(inv.ReserveStockRequest(request_id="y"), timeout=5)
        assert time.monotonic() - began >= 0.6  # two pushbacks of 300 ms, not 1-2 ms backoffs
    assert server.attempts == [1, 1, 2, 3]


async def test_no_attempt_past_the_deadline(backends: Any) -> None:
    (bad,) = await backends(unavailable)
    slow_retry = {"retry": {"max_attempts": 5, "initial_backoff": 1.0, "max_backoff": 1.0}}
    async with channel_to([bad], slow_retry) as channel:
        began = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError):
            await reserve(channel)(inv.ReserveStockRequest(request_id="x"), timeout=0.3)
        elapsed = time.monotonic() - began
    # Backoffs are drawn in [0, 1 s] (full jitter), so how many attempts fit in 0.3 s is chance
    # (three, when two draws sum below 0.3 s). What must hold: every attempt went out with time
    # left, and no backoff was slept past the deadline (a 1 s draw would end the call late).
    assert bad.attempts and all(left is not None and left > 0 for left in bad.deadlines)
    assert elapsed < 0.3 + 0.25, elapsed


async def test_per_attempt_timeout_retries_a_hung_attempt(backends: Any) -> None:
    calls = {"n": 0}

    async def hang_first(context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        calls["n"] += 1
        if calls["n"] == 1:
            await asyncio.sleep(5)
        return b""

    (server,) = await backends(hang_first)
    policy = {
        "retry": {
            "max_attempts": 2,
            "per_attempt_timeout": 0.2,
            "retryable_codes": ["DEADLINE_EXCEEDED"],
            "initial_backoff": 0.001,
            "max_backoff": 0.001,
        }
    }
    async with channel_to([server], policy) as channel:
        began = time.monotonic()
        await reserve(channel)(inv.ReserveStockRequest(request_id="x"), timeout=5)
        assert time.monotonic() - began < 1.0
    assert server.attempts == [1, 2]


async def test_expired_incoming_deadline_fails_without_sending(backends: Any) -> None:
    (server,) = await backends(ok)
    async with channel_to([server]) as channel:
        with deadline_scope(Deadline.after(-0.01)), pytest.raises(grpc.aio.AioRpcError) as raised:
            await reserve(channel)(inv.ReserveStockRequest(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert server.attempts == []


async def test_calls_inherit_the_incoming_deadline(backends: Any) -> None:
    async def slow(context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await asyncio.sleep(3)
        return b""

    (server,) = await backends(slow)
    async with channel_to([server]) as channel:
        began = time.monotonic()
        with deadline_scope(Deadline(began + 0.3)), pytest.raises(grpc.aio.AioRpcError) as raised:
            await reserve(channel)(inv.ReserveStockRequest(), timeout=10)
        elapsed = time.monotonic() - began
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 0.25 <= elapsed <= 0.45
    seen = server.deadlines[0]  # the server's interceptor published what was left
    # Not the call's own 10 s: the inherited 0.3 s. grpc writes the timeout header rounded up
    # to its unit and the server counts from its own clock, so a hair over 0.3 is seen too
    # (0.30072 once under a full make test).
    assert seen is not None and 0.1 < seen <= 0.305


async def test_detached_work_does_not_inherit_the_deadline(backends: Any) -> None:
    (server,) = await backends(ok)
    async with channel_to([server]) as channel:
        with deadline_scope(Deadline.after(0.3)):
            with detached():
                job = asyncio.ensure_future(reserve(channel)(inv.ReserveStockRequest(), timeout=5))
            await reserve(channel)(inv.ReserveStockRequest(), timeout=5)
        await job
    detached_seen, inherited_seen = sorted(server.deadlines, key=lambda d: -(d or 0))
    assert detached_seen is not None and detached_seen > 4  # its own 5 s, not the 0.3 s
    assert inherited_seen is not None and inherited_seen <= 0.3


async def test_policy_timeout_applies_when_the_caller_gives_none(backends: Any) -> None:
    (server,) = await backends(ok)
    async with channel_to([server], {"timeout": 0.7}) as channel:
        await reserve(channel)(inv.ReserveStockRequest())
    seen = server.deadlines[0]
    # A hair over, as above: the timeout travels rounded up and the server counts from its clock.
    assert seen is not None and 0.5 < seen <= 0.705


async def test_open_endpoint_breaker_is_skipped_then_service_fails_fast(backends: Any) -> None:
    bad, good = await backends(unavailable, ok)
    # Retries keep every call successful while one endpoint is bad, so only that endpoint's
    # breaker opens (the service's sees successful calls).
    policy = {**RETRY, "breaker": {"consecutive_failures": 3, "open_wait": 30.0}}
    transitions: list[tuple[str, str, State, State]] = []
    async with channel_to([bad, good], policy) as channel:
        channel.resilience.listeners.append(lambda *change: transitions.append(change))
        call = reserve(channel)
        for n in range(60):
            await call(inv.ReserveStockRequest(request_id=f"k{n}"), timeout=5)
        assert len(bad.attempts) == 3  # opened after three failures, then never picked
        assert len(good.attempts) == 60 and good.attempts.count(2) == 3  # the retried three
        good.behaviour = unavailable
        errors = []
        for n in range(10):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(inv.ReserveStockRequest(request_id=f"d{n}"), timeout=5)
            errors.append(raised.value.details())
    assert errors[0] == "injected" and errors[1:] == ["circuit open for 'inventory'"] * 9
    assert len(good.attempts) == 60 + 3  # one call's three attempts opened its breaker too
    assert ("inventory", bad.target, State.CLOSED, State.OPEN) in transitions
    assert channel.resilience.transitions[("endpoint", "closed", "open")] == 2


async def test_breaker_half_opens_and_closes_after_recovery(backends: Any) -> None:
    (server,) = await backends(unavailable)
    policy = {"breaker": {"consecutive_failures": 2, "open_wait": 0.3}}
    async with channel_to([server], policy) as channel:
        call = reserve(channel)
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError):
                await call(inv.ReserveStockRequest(), timeout=5)
        assert len(server.attempts) == 2
        server.behaviour = ok
        for _ in range(100):  # bounded: the open wait is 0.3 s
            try:
                await call(inv.ReserveStockRequest(), timeout=5)
                break
            except grpc.aio.AioRpcError as error:
                assert error.details() == "circuit open for 'inventory'"
                await asyncio.sleep(0.02)
        else:
            raise AssertionError("breaker never let a trial call through")
        assert channel.resilience.breaker.state is State.CLOSED
        assert channel.resilience.endpoint_states() == {server.target: State.CLOSED}


async def test_unary_stream_is_retried_before_the_first_message(backends: Any) -> None:
    bad, good = await backends(unavailable, ok)
    async with channel_to([bad, good], RETRY) as channel:
        # Served as a response stream here (the shop's is unary): a request with a key.
        stream = channel.unary_stream(
            f"/{SERVICE}/CommitStock",
            inv.CommitStockRequest.SerializeToString,
            inv.CommitStockResponse.FromString,
        )
        for n in range(20):
            replies = [reply async for reply in stream(inv.CommitStockRequest(request_id=f"c{n}"), timeout=5)]
            assert len(replies) == 1
    assert good.attempts.count(2) == len(bad.attempts) > 0


def test_idempotency_level_is_read_from_the_descriptor_pool() -> None:
    pool = descriptor_pool.DescriptorPool()
    proto = descriptor_pb2.FileDescriptorProto(name="t.proto", package="t")
    proto.message_type.add(name="M")
    service = proto.service.add(name="S")
    for name, level in (("Read", "NO_SIDE_EFFECTS"), ("Put", "IDEMPOTENT"), ("Write", None)):
        method = service.method.add(name=name, input_type=".t.M", output_type=".t.M")
        if level:
            method.options.idempotency_level = descriptor_pb2.MethodOptions.IdempotencyLevel.Value(level)
    pool.Add(proto)
    assert method_idempotent("/t.S/Read", pool)
    assert method_idempotent("/t.S/Put", pool)
    assert not method_idempotent("/t.S/Write", pool)
    assert not method_idempotent("/t.S/Missing", pool)
    assert not method_idempotent("/no.Such/Method", pool)
    assert not method_idempotent(RESERVE)  # the shop's protos set no level: request_id decides
