"""The attempt engine's decision table, pinned by exact sequences on a manual clock.

A real EndpointPool over fake channels (nothing is sent: the engine only decides and
reports), a balancer that picks the first candidate and writes down every outcome it is
told, and breakers on the same manual clock. Each test names one row of the table in
docs/channel.md and asserts what each party recorded.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import pytest

from mesh.balancer.base import Outcome, Picked
from mesh.channel.attempts import AttemptEngine
from mesh.channel.pool import EndpointPool
from mesh.channel.resilience import Resilience
from mesh.channel.spec import CallSpec
from mesh.deadline import Deadline
from mesh.registry.base import Endpoints, ServiceInstance
from mesh.resilience import CallOutcome, ManualClock, State, parse_policy
from mesh.resilience.breaker import BreakerSnapshot

A, B = "10.0.0.1:1", "10.0.0.2:1"
METHOD = "/shop.inventory.v1.InventoryService/ReserveStock"


Sent = tuple[str, float | None, Any]  # (target, timeout, metadata) of one attempt


class FakeChannel:
    """Stands in for a per-endpoint grpc.aio channel: records what the engine sends on it."""

    closed = False

    def __init__(self, target: str, sent: list[Sent]) -> None:
        self.target = target
        self.sent = sent

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return grpc.ChannelConnectivity.READY

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        def send(request: Any, *, timeout: float | None, metadata: Any, **_: Any) -> Sent:
            if self.closed:
                raise RuntimeError("the channel is closed")  # as grpc.aio's UsageError is
            self.sent.append((self.target, timeout, metadata))
            return self.sent[-1]

        return send


class FirstBalancer:
    """Picks the first candidate; records (target, code, counted, timed_out) of every outcome."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, str, bool, bool]] = []

    def pick(self, endpoints: Endpoints) -> Picked:
        chosen = endpoints[0]

        def done(outcome: Outcome) -> None:
            self.outcomes.append((chosen.target, outcome.code.name, outcome.counted, outcome.timed_out))

        return Picked(chosen, done)

    def update(self, endpoints: Endpoints) -> None:
        pass


class Request:
    """A request as the retry rules see it: ``request_id`` is the idempotency key."""

    def __init__(self, request_id: str = "") -> None:
        self.request_id = request_id


class Recorded(AttemptEngine):
    """An engine without a call surface: each end of the call is written down."""

    finished: list[BaseException | None]

    def _finish(self, error: BaseException | None) -> None:
        self.finished.append(error)


class Table:
    """One engine row's world: pool, balancer, breakers, clock and the finished calls."""

    def __init__(self, policy: dict[str, Any] | None = None, targets: tuple[str, ...] = (A, B)) -> None:
        self.clock = ManualClock()
        self.balancer = FirstBalancer()
        self.sent: list[Sent] = []
        self.pool = EndpointPool(
            "inventory", lambda: None, self.balancer, lambda instance: FakeChannel(instance.target, self.sent)
        )
        self.pool.apply([ServiceInstance.from_target("inventory", t) for t in targets])
        settings = parse_policy({"services": {"inventory": policy}} if policy else {})
        self.resilience = Resilience("inventory", settings.service("inventory"), clock=self.clock)
        self.spec = CallSpec(self.pool, "unary_unary", METHOD, None, None, True, 3, 1.0, self.resilience)
        self.finished: list[BaseException | None] = []

    def engine(self, request: Request | None = None, timeout: float | None = 5.0) -> Recorded:
        deadline = None if timeout is None else Deadline(self.clock() + timeout)
        engine = Recorded(self.spec, request or Request(), deadline, None, False)
        engine._clock = self.clock
        engine.finished = self.finished
        return engine

    async def send(self, engine: AttemptEngine) -> Sent:
        """Start the engine's next attempt as an adapter does; what it sent."""
        sent: Sent = engine._start() or await engine._start_later()
        return sent

    def endpoint(self, target: str) -> BreakerSnapshot:
        return self.resilience.endpoint_breaker(target).snapshot()

    @property
    def service(self) -> BreakerSnapshot:
        return self.resilience.breaker.snapshot()


def status(code: grpc.StatusCode, details: str = "injected") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


RETRY = {"retry": {"max_attempts": 3, "initial_backoff": 0.1, "max_backoff": 0.1}}


async def test_success_is_recorded_once_everywhere() -> None:
    table = Table()
    engine = table.engine()
    assert await table.send(engine) == (A, 5.0, None)
    assert (engine.endpoint and engine.endpoint.instance.target, engine.attempts) == (A, 1)
    table.clock.advance(0.01)
    engine._succeeded()
    engine._succeeded()  # a second report of the same attempt is ignored
    assert table.balancer.outcomes == [(A, "OK", True, False)]
    assert (table.endpoint(A).calls, table.service.calls, table.finished) == (1, 1, [None])


async def test_deadline_gone_before_the_call_sends_nothing_and_records_nothing() -> None:
    table = Table()
    engine = table.engine(timeout=0.0)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        engine._start()
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert (table.sent, table.balancer.outcomes) == ([], [])
    assert (table.endpoint(A).calls, table.service.calls) == (0, 0)
    assert table.finished == [raised.value]


async def test_deadline_gone_before_an_attempt_is_sent_records_nothing() -> None:
    table = Table(targets=())
    engine = table.engine(timeout=1.0)
    assert engine._start() is None  # nothing to pick yet: the adapter would wait
    table.pool.apply([ServiceInstance.from_target("inventory", A)])
    table.clock.advance(1.0)  # the deadline passes while waiting
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await engine._start_later()
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert table.sent == []
    assert table.balancer.outcomes == [(A, "CANCELLED", False, False)]  # the pick is given back
    assert (table.endpoint(A).calls, table.service.calls) == (0, 0)
    assert table.finished == [raised.value]


async def test_the_callers_deadline_is_no_ones_failure() -> None:
    table = Table({"breaker": {"consecutive_failures": 1}})
    engine = table.engine(timeout=0.005)  # a customer asking for 5 ms
    _, timeout, _ = await table.send(engine)
    assert timeout == pytest.approx(0.005)
    table.clock.advance(0.005)
    with pytest.raises(grpc.aio.AioRpcError):
        engine._failed(status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    assert table.balancer.outcomes == [(A, "DEADLINE_EXCEEDED", False, False)]
    assert (table.endpoint(A).calls, table.service.calls) == (0, 0)
    assert table.resilience.breaker.state is State.CLOSED


async def test_an_attempts_own_timeout_is_that_endpoints_failure_and_is_retried_elsewhere() -> None:
    policy = {
        "retry": {**RETRY["retry"], "per_attempt_timeout": 0.2, "retryable_codes": ["DEADLINE_EXCEEDED"]}
    }
    table = Table(policy)
    engine = table.engine(Request("key-1"), timeout=5.0)
    assert await table.send(engine) == (A, pytest.approx(0.2), None)
    table.clock.advance(0.2)
    delay = engine._failed(status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
    assert 0 <= delay <= 0.1  # full jitter
    table.clock.advance(delay)
    assert await table.send(engine) == (B, pytest.approx(0.2), (("x-mesh-attempt", "2"),))
    engine._succeeded()
    assert table.balancer.outcomes == [(A, "DEADLINE_EXCEEDED", True, True), (B, "OK", True, False)]
    assert (table.endpoint(A).failed, table.endpoint(B).calls) == (1, 1)
    assert (table.service.calls, table.service.failed) == (1, 0)  # the call succeeded
    assert table.resilience.retries == 1


async def test_a_transport_failure_fails_over_at_once_without_using_a_retry() -> None:
    table = Table()
    engine = table.engine()
    await table.send(engine)
    refused = status(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
    assert engine._failed(refused) == 0.0
    assert (await table.send(engine))[0] == B
    engine._succeeded()
    assert table.balancer.outcomes == [(A, "UNAVAILABLE", True, False), (B, "OK", True, False)]
    assert table.resilience.retries == 0
    assert table.endpoint(A).failed == 1


async def test_every_endpoint_refusing_ends_the_call_with_the_last_error() -> None:
    table = Table()
    engine = table.engine()
    refused = status(grpc.StatusCode.UNAVAILABLE, "connection refused")
    for _ in range(2):
        await table.send(engine)
        engine._failed(refused)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await table.send(engine)
    assert raised.value is refused
    assert [target for target, _, _ in table.sent] == [A, B]
    assert (table.service.calls, table.service.failed) == (1, 1)  # the service refused: it counts


async def test_a_mutation_without_an_idempotency_key_is_not_retried() -> None:
    table = Table(RETRY)
    engine = table.engine(Request(""))
    await table.send(engine)
    error = status(grpc.StatusCode.UNAVAILABLE)
    with pytest.raises(grpc.aio.AioRpcError):
        engine._failed(error)
    assert table.resilience.retries == 0
    assert (table.service.failed, table.finished) == (1, [error])


async def test_an_exhausted_budget_stops_retries() -> None:
    table = Table({**RETRY, "budget": {"ratio": 0.0, "min_retries_per_second": 0.0}})
    engine = table.engine(Request("key"))
    await table.send(engine)
    with pytest.raises(grpc.aio.AioRpcError):
        engine._failed(status(grpc.StatusCode.UNAVAILABLE))
    assert (table.resilience.retries, table.resilience.budget_exhausted) == (0, 1)


async def test_a_stream_after_its_first_message_is_not_retried() -> None:
    table = Table(RETRY)
    engine = table.engine(Request("key"))
    await table.send(engine)
    with pytest.raises(grpc.aio.AioRpcError):
        engine._failed(status(grpc.StatusCode.UNAVAILABLE), replayable=False)
    assert table.resilience.retries == 0


async def test_an_open_service_circuit_fails_fast_and_records_nothing() -> None:
    table = Table({"breaker": {"consecutive_failures": 1}})
    opened = table.engine()
    await table.send(opened)
    with pytest.raises(grpc.aio.AioRpcError):
        opened._failed(status(grpc.StatusCode.INTERNAL))
    assert table.resilience.breaker.state is State.OPEN
    outcomes = list(table.balancer.outcomes)
    engine = table.engine()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        engine._start()
    assert raised.value.details() == "circuit open for 'inventory'"
    assert table.resilience.fail_fast == 1
    assert table.balancer.outcomes == outcomes
    assert len(table.sent) == 1


async def test_open_endpoint_breakers_are_skipped_then_the_call_fails_fast() -> None:
    table = Table({"breaker": {"window_size": 1, "minimum_calls": 1, "failure_rate_threshold": 100}})
    for target in (A, B):
        breaker = table.resilience.endpoint_breaker(target)
        permit = breaker.allow()
        assert permit is not None
        breaker.record(permit, CallOutcome("UNAVAILABLE"))
        if target == A:
            assert (await table.send(table.engine()))[0] == B
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await table.send(table.engine())
    assert raised.value.details() == "circuit open for 'inventory'"


async def test_no_endpoint_is_unavailable_and_recorded_against_no_one() -> None:
    table = Table(targets=())
    engine = table.engine()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await table.send(engine)
    assert raised.value.details() == "no healthy endpoint for 'inventory'"
    assert table.service.calls == 0
    assert table.resilience.breaker.allow() is not None  # the permit was given back


async def test_a_cancelled_attempt_is_recorded_against_no_one() -> None:
    table = Table({"breaker": {"consecutive_failures": 1}})
    engine = table.engine()
    await table.send(engine)
    engine._cancelled = True  # as the call's cancel() does
    engine._abandoned(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await engine._start_later()
    assert table.balancer.outcomes == [(A, "CANCELLED", False, False)]
    assert (table.endpoint(A).calls, table.service.calls) == (0, 0)
    assert isinstance(table.finished[0], asyncio.CancelledError)


async def test_a_call_ends_once_even_when_ended_twice() -> None:
    table = Table()
    engine = table.engine()
    engine._end_with(asyncio.CancelledError())
    engine._end_with(asyncio.CancelledError())
    assert len(table.finished) == 1


async def test_an_attempt_refused_before_sending_gives_its_pick_and_permits_back() -> None:
    table = Table({"breaker": {"consecutive_failures": 1}})
    table.pool.pick(())[0].channel.closed = True  # A, which the first pick chooses
    engine = table.engine()
    with pytest.raises(RuntimeError):
        engine._start()
    assert table.balancer.outcomes == [(A, "CANCELLED", False, False)]
    assert (table.endpoint(A).calls, table.service.calls) == (0, 0)
    assert isinstance(table.finished[0], RuntimeError)
