"""The selector's filters and waits, and the statuses the channel raises itself.

A real EndpointPool over fake channels: picking needs no network.
"""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import pytest

from mesh.balancer.base import Outcome, Picked
from mesh.channel.errors import circuit_open_error, deadline_error, no_endpoint_error
from mesh.channel.pool import EndpointPool
from mesh.channel.resilience import Resilience
from mesh.channel.selector import select
from mesh.channel.spec import CallSpec
from mesh.deadline import Deadline
from mesh.registry.base import Endpoints, ServiceInstance
from mesh.resilience import CallOutcome, ManualClock, parse_policy

A, B, C = "10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"


class FakeChannel:
    def __init__(self, state: grpc.ChannelConnectivity = grpc.ChannelConnectivity.READY) -> None:
        self.state = state

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.state


class First:
    def pick(self, endpoints: Endpoints) -> Picked:
        def done(outcome: Outcome) -> None:
            pass

        return Picked(endpoints[0], done)

    def update(self, endpoints: Endpoints) -> None:
        pass


def spec_for(targets: tuple[str, ...], failing: tuple[str, ...] = (), *, resolved: bool = True) -> CallSpec:
    channels = {
        t: FakeChannel(
            grpc.ChannelConnectivity.TRANSIENT_FAILURE if t in failing else grpc.ChannelConnectivity.READY
        )
        for t in targets
    }
    pool = EndpointPool("inventory", lambda: None, First(), lambda instance: channels[instance.target])
    if resolved:
        pool.apply([ServiceInstance.from_target("inventory", t) for t in targets])
    policy = parse_policy({"services": {"inventory": {"breaker": {"consecutive_failures": 1}}}})
    resilience = Resilience("inventory", policy.service("inventory"), clock=ManualClock())
    return CallSpec(pool, "unary_unary", "/s.S/M", None, None, True, 3, 0.05, resilience)


async def chosen(spec: CallSpec, exclude: set[str] = set(), tried: set[str] = set(), **kwargs: Any) -> str:  # noqa: B006
    endpoint, _ = await select(spec, set(exclude), set(tried), None, False, None, **kwargs)
    return endpoint.instance.target


async def test_excluded_endpoints_are_never_picked_and_tried_ones_only_last() -> None:
    spec = spec_for((A, B, C))
    assert await chosen(spec, exclude={A}) == B
    assert await chosen(spec, exclude={A}, tried={B}) == C
    assert await chosen(spec, exclude={A, C}, tried={B}) == B  # tried, but the only one left


async def test_failing_connections_are_avoided_only_when_asked() -> None:
    spec = spec_for((A, B), failing=(A,))
    assert await chosen(spec) == A
    assert await chosen(spec, avoid_failing=True) == B
    spec = spec_for((A,), failing=(A,))
    assert await chosen(spec, avoid_failing=True) == A  # down, but the only one


async def test_breaker_blocked_endpoints_are_skipped_then_the_circuit_is_open() -> None:
    spec = spec_for((A, B))
    for target in (A, B):
        breaker = spec.resilience.endpoint_breaker(target)
        permit = breaker.allow()
        assert permit is not None
        breaker.record(permit, CallOutcome("UNAVAILABLE"))
        if target == A:
            assert await chosen(spec) == B
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await chosen(spec)
    assert raised.value.details() == "circuit open for 'inventory'"
    assert spec.resilience.fail_fast == 1


async def test_no_endpoint_fails_after_the_resolve_timeout_or_with_the_last_error() -> None:
    unresolved = spec_for((), resolved=False)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await chosen(unresolved)
    assert raised.value.details() == "no healthy endpoint for 'inventory'"
    spec = spec_for((A,))
    last = no_endpoint_error("elsewhere")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await select(spec, {A}, set(), None, False, last)
    assert raised.value is last


async def test_a_deadline_before_the_registrys_answer_is_the_callers_not_an_outage() -> None:
    unresolved = spec_for((), resolved=False)  # resolve_timeout 0.05 s
    deadline = Deadline.after(0.01)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await select(unresolved, set(), set(), deadline, False, None)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert deadline.expired()


async def test_a_wait_that_ends_early_does_not_end_the_call_before_its_deadline() -> None:
    """uvloop's timers run on the loop's millisecond clock and can fire before their time."""
    unresolved = spec_for((), resolved=False)
    pool = unresolved.pool
    real_wait, waits = pool.wait_changed, []

    async def early_then_real(version: int, within: float | None) -> bool:
        waits.append(within)
        return False if len(waits) == 1 else await real_wait(version, within)

    pool.wait_changed = early_then_real  # type: ignore[method-assign]
    deadline = Deadline.after(0.01)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await select(unresolved, set(), set(), deadline, False, None)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert deadline.expired() and len(waits) >= 2


async def test_waiting_for_ready_stops_at_the_deadline() -> None:
    spec = spec_for((), resolved=True)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await select(spec, set(), set(), Deadline.after(0.05), True, None)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_the_channels_own_statuses_name_what_is_down() -> None:
    assert (no_endpoint_error("payment").code(), no_endpoint_error("payment").details()) == (
        grpc.StatusCode.UNAVAILABLE,
        "no healthy endpoint for 'payment'",
    )
    assert circuit_open_error("payment").details() == "circuit open for 'payment'"
    assert deadline_error().code() is grpc.StatusCode.DEADLINE_EXCEEDED
