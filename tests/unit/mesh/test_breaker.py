"""The circuit breaker pinned by exact call sequences against a fake clock.

Ported in spirit from resilience4j's CircuitBreakerStateMachineTest: every test drives the
state machine call by call and checks the state after each step that matters.
"""

from __future__ import annotations

import pytest

from mesh.errors import ConfigError
from mesh.resilience.breaker import (
    BreakerConfig,
    CallOutcome,
    CircuitBreaker,
    Permit,
    State,
)
from mesh.resilience.clock import ManualClock

S = CallOutcome("OK", 0.01)
F = CallOutcome("UNAVAILABLE", 0.01)
SLOW = CallOutcome("OK", 5.0)
WAIT = 30.0


def config(**overrides: object) -> BreakerConfig:
    values: dict[str, object] = {
        "window_size": 5,
        "minimum_calls": 5,
        "failure_rate_threshold": 50.0,
        "slow_call_duration": 2.0,
        "slow_call_rate_threshold": 100.0,
        "open_wait": WAIT,
        "half_open_permits": 3,
    }
    values.update(overrides)
    return BreakerConfig(**values)  # type: ignore[arg-type]


class Recorder:
    def __init__(self) -> None:
        self.transitions: list[tuple[State, State]] = []

    def __call__(self, old: State, new: State) -> None:
        self.transitions.append((old, new))


def breaker(clock: ManualClock, **overrides: object) -> tuple[CircuitBreaker, Recorder]:
    b = CircuitBreaker(config(**overrides), clock=clock)
    recorder = Recorder()
    b.add_listener(recorder)
    return b, recorder


def call(b: CircuitBreaker, outcome: CallOutcome) -> None:
    permit = b.allow()
    assert permit is not None, f"call refused in state {b.state}"
    b.record(permit, outcome)


def open_breaker(b: CircuitBreaker) -> None:
    for outcome in (F, F, F, S, S):
        call(b, outcome)
    assert b.state is State.OPEN


def test_fffss_opens_at_sixty_percent_and_not_before_minimum_calls() -> None:
    clock = ManualClock()
    b, recorder = breaker(clock)
    for outcome in (F, F, F, S):
        call(b, outcome)
        assert b.state is State.CLOSED  # 100 %, 100 %, 100 %, 75 %: below 5 calls
    assert b.snapshot().failure_rate is None
    call(b, S)
    assert b.state is State.OPEN
    assert recorder.transitions == [(State.CLOSED, State.OPEN)]


def test_ffsss_stays_closed_at_forty_percent() -> None:
    b, recorder = breaker(ManualClock())
    for outcome in (F, F, S, S, S):
        call(b, outcome)
    snapshot = b.snapshot()
    assert (snapshot.state, snapshot.calls, snapshot.failed, snapshot.failure_rate) == (
        State.CLOSED,
        5,
        2,
        40.0,
    )
    assert recorder.transitions == []


def test_window_slides_old_failures_out() -> None:
    b, _ = breaker(ManualClock())
    for outcome in (F, F, S, S, S, S, F, F):  # window after 8 calls: S, S, S, F, F -> 40 %
        call(b, outcome)
    assert b.state is State.CLOSED
    call(b, F)  # S, S, F, F, F -> 60 %
    assert b.state is State.OPEN


def test_exactly_at_threshold_opens() -> None:
    b, _ = breaker(ManualClock(), window_size=4, minimum_calls=4)
    for outcome in (F, S, F, S):  # 50 % >= 50 %
        call(b, outcome)
    assert b.state is State.OPEN


def test_minimum_calls_is_capped_at_window_size() -> None:
    b, _ = breaker(ManualClock(), window_size=5, minimum_calls=100)
    for outcome in (F, F, F, S, S):
        call(b, outcome)
    assert b.state is State.OPEN


def test_slow_calls_open_it() -> None:
    b, recorder = breaker(ManualClock(), slow_call_rate_threshold=60.0)
    for outcome in (SLOW, SLOW, S, SLOW, S):  # all successes, 60 % slow
        call(b, outcome)
    assert b.state is State.OPEN
    assert b.snapshot().slow == 3
    assert recorder.transitions == [(State.CLOSED, State.OPEN)]


def test_a_call_exactly_at_the_slow_duration_is_not_slow() -> None:
    b, _ = breaker(ManualClock(), slow_call_rate_threshold=20.0)
    for _ in range(5):
        call(b, CallOutcome("OK", 2.0))
    assert b.state is State.CLOSED
    assert b.snapshot().slow == 0


def test_still_open_at_wait_minus_one_half_open_at_wait_plus_one() -> None:
    clock = ManualClock()
    b, recorder = breaker(clock)
    open_breaker(b)
    clock.advance(WAIT - 1)
    assert b.allow() is None
    assert b.state is State.OPEN
    assert b.snapshot().not_permitted == 1
    clock.advance(2)
    assert b.allow() is not None
    assert b.state is State.HALF_OPEN
    assert recorder.transitions == [(State.CLOSED, State.OPEN), (State.OPEN, State.HALF_OPEN)]


def test_open_wait_counts_from_the_moment_it_opened() -> None:
    clock = ManualClock()
    b, _ = breaker(clock)
    for outcome in (F, F, F, S):
        call(b, outcome)
    clock.advance(100.0)  # time spent closed does not shorten the wait
    call(b, S)
    clock.advance(WAIT - 0.5)
    assert not b.would_allow()
    clock.advance(0.5)
    assert b.would_allow()


def test_exactly_n_half_open_permits_and_the_next_is_refused() -> None:
    clock = ManualClock()
    b, _ = breaker(clock, half_open_permits=3)
    open_breaker(b)
    clock.advance(WAIT + 1)
    permits = [b.allow() for _ in range(3)]
    assert all(p is not None for p in permits)
    assert b.allow() is None
    assert not b.would_allow()
    assert b.state is State.HALF_OPEN


def test_half_open_successes_close_it_with_a_fresh_window() -> None:
    clock = ManualClock()
    b, recorder = breaker(clock)
    open_breaker(b)
    clock.advance(WAIT + 1)
    permits = [b.allow() for _ in range(3)]
    for permit in permits[:2]:
        assert permit is not None
        b.record(permit, S)
        assert b.state is State.HALF_OPEN  # decided only once all 3 are in
    assert permits[2] is not None
    b.record(permits[2], S)
    assert b.state is State.CLOSED
    assert b.snapshot().calls == 0
    assert recorder.transitions[-1] == (State.HALF_OPEN, State.CLOSED)
    for outcome in (F, F, F, S):  # a fresh window: below minimum again
        call(b, outcome)
    assert b.state is State.CLOSED


def test_half_open_failures_reopen_it_for_another_wait() -> None:
    clock = ManualClock()
    b, recorder = breaker(clock)
    open_breaker(b)
    clock.advance(WAIT + 1)
    for outcome in (F, F, S):  # 67 % of the trial calls failed
        call(b, outcome)
    assert b.state is State.OPEN
    assert recorder.transitions[-1] == (State.HALF_OPEN, State.OPEN)
    clock.advance(WAIT - 1)
    assert b.allow() is None
    clock.advance(2)
    assert b.allow() is not None


def test_single_permit_half_open_failure_reopens_at_once() -> None:
    clock = ManualClock()
    b, _ = breaker(clock, half_open_permits=1)
    open_breaker(b)
    clock.advance(WAIT + 1)
    call(b, F)
    assert b.state is State.OPEN


def test_two_concurrent_failures_cause_exactly_one_transition() -> None:
    b, recorder = breaker(ManualClock())
    for outcome in (F, F, S):
        call(b, outcome)
    first, second = b.allow(), b.allow()  # both in flight while CLOSED
    assert first is not None and second is not None
    b.record(first, F)  # F, F, S, F: 4 calls, below minimum
    third = b.allow()
    assert third is not None
    b.record(second, F)  # 5 calls, 80 %: opens
    b.record(third, F)  # issued before the transition: dropped
    assert b.state is State.OPEN
    assert recorder.transitions == [(State.CLOSED, State.OPEN)]


def test_two_concurrent_half_open_failures_reopen_once() -> None:
    clock = ManualClock()
    b, recorder = breaker(clock, half_open_permits=2)
    open_breaker(b)
    clock.advance(WAIT + 1)
    first, second = b.allow(), b.allow()
    assert first is not None and second is not None
    b.record(first, F)
    b.record(second, F)
    assert recorder.transitions == [
        (State.CLOSED, State.OPEN),
        (State.OPEN, State.HALF_OPEN),
        (State.HALF_OPEN, State.OPEN),
    ]


def test_outcome_of_a_call_started_before_opening_does_not_count_in_half_open() -> None:
    clock = ManualClock()
    b, _ = breaker(clock, half_open_permits=1)
    for outcome in (F, F, F, S):
        call(b, outcome)
    straggler = b.allow()
    assert straggler is not None
    call(b, S)  # opens
    clock.advance(WAIT + 1)
    probe = b.allow()
    assert probe is not None
    b.record(straggler, F)  # a CLOSED-era failure: must not decide the trial
    assert b.state is State.HALF_OPEN
    b.record(probe, S)
    assert b.state is State.CLOSED


def test_never_failure_codes_never_count() -> None:
    clock = ManualClock()
    b, recorder = breaker(clock)
    ignored = (
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "PERMISSION_DENIED",
        "UNAUTHENTICATED",
    )
    for _ in range(10):
        for code in ignored:
            call(b, CallOutcome(code, 0.01))
    assert b.snapshot().calls == 0
    for outcome in (F, F, S, S):  # they did not dilute the window either
        call(b, outcome)
    assert b.state is State.CLOSED
    assert recorder.transitions == []


@pytest.mark.parametrize("code", ["UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN"])
def test_default_failure_codes_count(code: str) -> None:
    b, _ = breaker(ManualClock())
    for _ in range(5):
        call(b, CallOutcome(code, 0.01))
    assert b.state is State.OPEN


def test_a_throttled_caller_is_not_the_servers_failure() -> None:
    """RESOURCE_EXHAUSTED (a login throttle, a quota) is not recorded: one customer hammering
    a throttled method must not open the circuit for everyone."""
    b, recorder = breaker(ManualClock())
    for _ in range(20):
        call(b, CallOutcome("RESOURCE_EXHAUSTED", 0.01))
    assert b.state is State.CLOSED and b.snapshot().calls == 0
    assert recorder.transitions == []


@pytest.mark.parametrize("code", ["OK", "CANCELLED", "ABORTED", "UNIMPLEMENTED", "OUT_OF_RANGE"])
def test_other_codes_are_successes(code: str) -> None:
    b, _ = breaker(ManualClock())
    for _ in range(5):
        call(b, CallOutcome(code, 0.01))
    snapshot = b.snapshot()
    assert (snapshot.state, snapshot.calls, snapshot.failed) == (State.CLOSED, 5, 0)


def test_ignored_outcome_in_half_open_gives_the_permit_back() -> None:
    clock = ManualClock()
    b, _ = breaker(clock, half_open_permits=1)
    open_breaker(b)
    clock.advance(WAIT + 1)
    permit = b.allow()
    assert permit is not None and b.allow() is None
    b.record(permit, CallOutcome("NOT_FOUND", 0.01))
    assert b.state is State.HALF_OPEN
    assert b.allow() is not None


def test_release_gives_a_half_open_permit_back() -> None:
    clock = ManualClock()
    b, _ = breaker(clock, half_open_permits=1)
    open_breaker(b)
    clock.advance(WAIT + 1)
    permit = b.allow()
    assert permit is not None and b.allow() is None
    b.release(permit)
    assert b.allow() is not None


def test_consecutive_form_four_failures_closed_fifth_opens() -> None:
    clock = ManualClock()
    b = CircuitBreaker(BreakerConfig.consecutive(5, 60.0), clock=clock)
    for _ in range(4):
        call(b, F)
    assert b.state is State.CLOSED
    call(b, S)  # a success resets the run
    for _ in range(4):
        call(b, F)
    assert b.state is State.CLOSED
    call(b, F)
    assert b.state is State.OPEN
    clock.advance(59.0)
    assert b.allow() is None
    clock.advance(2.0)
    probe = b.allow()
    assert probe is not None and b.allow() is None  # one probe
    b.record(probe, S)
    assert b.state is State.CLOSED


def test_consecutive_form_probe_failure_reopens_and_slow_calls_never_open() -> None:
    clock = ManualClock()
    b = CircuitBreaker(BreakerConfig.consecutive(2, 10.0), clock=clock)
    for _ in range(20):
        call(b, CallOutcome("OK", 3600.0))
    assert b.state is State.CLOSED
    call(b, F)
    call(b, F)
    clock.advance(11.0)
    call(b, F)
    assert b.state is State.OPEN


def test_a_failing_listener_does_not_break_the_breaker(caplog: pytest.LogCaptureFixture) -> None:
    b = CircuitBreaker(config(), clock=ManualClock())

    def broken(old: State, new: State) -> None:
        raise RuntimeError("metrics down")

    recorder = Recorder()
    b.add_listener(broken)
    b.add_listener(recorder)
    open_breaker(b)
    assert recorder.transitions == [(State.CLOSED, State.OPEN)]
    assert "metrics down" in caplog.text


def test_stale_permit_for_release_is_harmless() -> None:
    clock = ManualClock()
    b, _ = breaker(clock, half_open_permits=1)
    stale = b.allow()
    assert stale is not None
    open_breaker(b)
    clock.advance(WAIT + 1)
    assert b.allow() is not None
    b.release(stale)
    assert b.allow() is None


def test_permit_is_a_value() -> None:
    assert Permit(3) == Permit(3)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"window_size": 0}, "window_size"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"failure_rate_threshold": 0}, "failure_rate_threshold"),
        ({"failure_rate_threshold": 101}, "failure_rate_threshold"),
        ({"slow_call_duration": 0}, "slow_call_duration"),
        ({"slow_call_rate_threshold": -1}, "slow_call_rate_threshold"),
        ({"open_wait": 0}, "open_wait"),
        ({"open_wait": float("inf")}, "open_wait"),
        ({"half_open_permits": 0}, "half_open_permits"),
        ({"window_size": True}, "window_size"),
        ({"window_size": 2.5}, "window_size"),
        ({"failure_codes": frozenset({"BOGUS"})}, "failure_codes"),
        ({"failure_codes": frozenset({"OK"})}, "failure_codes"),
        ({"failure_codes": "UNAVAILABLE"}, "failure_codes"),
        ({"ignored_codes": frozenset({"UNAVAILABLE"})}, "ignored_codes"),
    ],
)
def test_invalid_config_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        config(**overrides)


def test_consecutive_form_validates_its_count() -> None:
    with pytest.raises(ConfigError, match=r"^consecutive_failures: "):
        BreakerConfig.consecutive(0)


def test_code_names_are_normalised() -> None:
    c = config(failure_codes=frozenset({"unavailable", " Internal "}))
    assert c.failure_codes == frozenset({"UNAVAILABLE", "INTERNAL"})
