"""Regression tests for defects found in the mesh channel, each against loopback servers.

Every test here failed on the channel as it was before the attempt engine (commit a9c09a6):
the failure each one showed is named in its docstring.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import pytest

from mesh.channel import mesh_channel
from mesh.registry import StaticDiscovery
from mesh.resilience import State, parse_policy
from shop.inventory.v1 import inventory_pb2 as inv
from tests.support.loopback import SERVICE, Backend, channel_to, ok, reserve
from tests.support.loopback import backends as backends  # the fixture
from tests.support.waiting import wait_until

ONE_FAILURE_OPENS = {"breaker": {"consecutive_failures": 1, "open_wait": 0.05}}


async def test_a_breaker_of_an_endpoint_that_left_does_not_break_later_calls(backends: Any) -> None:
    """Was: every call after the orphaned breaker opened raised ``KeyError('<host:port>')``."""
    release = asyncio.Event()

    async def fail_when_released(context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        await release.wait()
        await context.abort(grpc.StatusCode.UNAVAILABLE, "injected")
        raise AssertionError("abort returns only by raising")

    leaving, staying = await backends(fail_when_released, ok)
    discovery = StaticDiscovery({"inventory": [leaving.target]})
    settings = parse_policy({"services": {"inventory": ONE_FAILURE_OPENS}})
    async with mesh_channel("inventory", discovery, policy=settings, outlier=None) as channel:
        call = reserve(channel)
        in_flight = asyncio.ensure_future(call(inv.ReserveStockRequest(), timeout=5))
        await wait_until(lambda: bool(leaving.attempts), 5, "the call reached the endpoint")
        discovery.set("inventory", [staying.target])
        await wait_until(lambda: {e.target for e in channel.endpoints} == {staying.target}, 5, "it left")
        release.set()
        with pytest.raises(grpc.aio.AioRpcError):
            await in_flight
        breaker = channel.resilience.breaker
        await wait_until(lambda: breaker.peek_state() is not State.OPEN, 5, "the service breaker's wait")
        for _ in range(3):
            await call(inv.ReserveStockRequest(), timeout=5)
    assert len(staying.attempts) == 3


async def test_a_unary_call_tells_the_time_remaining(backends: Any) -> None:
    """Was: ``AttributeError``: the method was spelled ``timeremaining_time``."""
    (backend,) = await backends(ok)
    async with channel_to([backend]) as channel:
        call = reserve(channel)(inv.ReserveStockRequest(), timeout=30)
        left = call.time_remaining()
        assert left is not None and 29 < left <= 30
        await call
        unbounded = reserve(channel)(inv.ReserveStockRequest())
        assert unbounded.time_remaining() is None
        await unbounded


def _stream_unary(channel: Any) -> Any:
    return channel.stream_unary(
        f"/{SERVICE}/ReserveStock",
        inv.ReserveStockRequest.SerializeToString,
        inv.ReserveStockResponse.FromString,
    )


async def test_stream_request_done_callbacks_run_when_opening_fails() -> None:
    """Was: the callback never ran when no endpoint could take the call."""
    discovery = StaticDiscovery({"inventory": []})
    async with mesh_channel("inventory", discovery) as channel:
        seen: list[Any] = []
        call = _stream_unary(channel)(iter(()), timeout=5)
        call.add_done_callback(seen.append)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
        assert seen == [call]
        assert call.done()
        assert await call.code() is grpc.StatusCode.UNAVAILABLE


async def test_stream_request_done_callbacks_run_when_cancelled_before_opening() -> None:
    """Was: the callback never ran when the call was cancelled while waiting for endpoints."""
    discovery = StaticDiscovery({"inventory": []})
    async with mesh_channel("inventory", discovery) as channel:
        seen: list[Any] = []
        call = _stream_unary(channel)(iter(()), timeout=5, wait_for_ready=True)
        call.add_done_callback(seen.append)
        waiting = asyncio.ensure_future(call)
        await asyncio.sleep(0)  # let it start waiting for an endpoint
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert seen == [call]
        assert call.cancelled() and call.done()


async def refused(context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    """Fails as a refused connection does (the details are what classify it as transport)."""
    await context.abort(grpc.StatusCode.UNAVAILABLE, "connection refused (injected)")
    raise AssertionError("abort returns only by raising")


async def test_a_unary_stream_attempt_never_sent_is_recorded_against_no_one(backends: Any) -> None:
    """Was: the attempt the deadline stopped before sending counted as the endpoint's failure.

    The only endpoint refuses every attempt; with ``wait_for_ready`` the call pauses and tries
    it again, until the deadline passes during a pause: that last attempt is never sent, and
    the breaker saw one more failure than the server saw attempts.
    """
    (backend,) = await backends(refused)
    async with channel_to([backend]) as channel:
        stream = channel.unary_stream(
            f"/{SERVICE}/CommitStock",
            inv.CommitStockRequest.SerializeToString,
            inv.CommitStockResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stream(inv.CommitStockRequest(), timeout=0.25, wait_for_ready=True):
                pass
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        recorded = channel.resilience.endpoint_breaker(backend.target).snapshot()
    assert len(backend.attempts) >= 2
    assert recorded.calls == len(backend.attempts)


async def test_backend_helper_records_attempts(backends: Any) -> None:
    """The loopback helper itself: an attempt is recorded once per call that arrives."""
    (backend,) = await backends(ok)
    assert isinstance(backend, Backend)
    async with channel_to([backend]) as channel:
        await reserve(channel)(inv.ReserveStockRequest(), timeout=5)
    assert backend.attempts == [1]
