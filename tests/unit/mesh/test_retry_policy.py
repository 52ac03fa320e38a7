"""Retry decisions: exact cases for pushback, deadlines and safety, then properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.errors import ConfigError
from mesh.resilience.backoff import Backoff
from mesh.resilience.codes import STATUS_CODE_NAMES
from mesh.resilience.retry import (
    RetryPolicy,
    idempotent_level,
    pushback_seconds,
    stream_retryable,
)

HALF = Backoff(initial=0.1, multiplier=2.0, maximum=1.0, rng=lambda: 0.5)


def policy(**kwargs: object) -> RetryPolicy:
    values: dict[str, object] = {"max_attempts": 3, "backoff": HALF}
    values.update(kwargs)
    return RetryPolicy(**values)  # type: ignore[arg-type]


def test_retryable_code_gets_the_backoff_delay() -> None:
    p = policy()
    assert p.next_delay(1, "UNAVAILABLE", now=0.0) == pytest.approx(0.05)
    assert p.next_delay(2, "UNAVAILABLE", now=0.0) == pytest.approx(0.1)


def test_attempts_exhausted() -> None:
    assert policy(max_attempts=3).next_delay(3, "UNAVAILABLE", now=0.0) is None
    assert policy(max_attempts=1).next_delay(1, "UNAVAILABLE", now=0.0) is None


def test_code_not_retryable() -> None:
    p = policy()
    for code in ("OK", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "INTERNAL"):
        assert p.next_delay(1, code, now=0.0) is None


def test_configured_codes_are_retried() -> None:
    p = policy(retryable_codes=frozenset({"unavailable", "RESOURCE_EXHAUSTED"}))
    assert p.retryable_codes == frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
    assert p.next_delay(1, "RESOURCE_EXHAUSTED", now=0.0) is not None


def test_pushback_is_the_exact_wait() -> None:
    p = policy()
    assert p.next_delay(1, "UNAVAILABLE", now=0.0, pushback="250") == 0.25
    assert p.next_delay(1, "UNAVAILABLE", now=0.0, pushback="0") == 0.0
    assert p.next_delay(1, "UNAVAILABLE", now=0.0, pushback=" 40 ") == 0.04


@pytest.mark.parametrize("value", ["-1", "-250", "abc", "", "1.5", "1e3", "0x10", "+5", "١٢"])
def test_negative_or_malformed_pushback_means_no_retry(value: str) -> None:
    assert policy().next_delay(1, "UNAVAILABLE", now=0.0, pushback=value) is None
    assert pushback_seconds(value) is None


def test_pushback_does_not_make_a_code_retryable_or_add_attempts() -> None:
    p = policy()
    assert p.next_delay(1, "INTERNAL", now=0.0, pushback="10") is None
    assert p.next_delay(3, "UNAVAILABLE", now=0.0, pushback="10") is None


def test_no_attempt_at_or_after_the_deadline() -> None:
    p = policy()
    assert p.next_delay(1, "UNAVAILABLE", now=10.0, deadline=10.06) == pytest.approx(0.05)
    assert p.next_delay(1, "UNAVAILABLE", now=10.0, deadline=10.05) is None
    assert p.next_delay(1, "UNAVAILABLE", now=10.0, deadline=10.0) is None
    assert p.next_delay(1, "UNAVAILABLE", now=10.0, deadline=11.0, pushback="1000") is None


def test_attempt_is_one_based() -> None:
    with pytest.raises(ValueError):
        policy().next_delay(0, "UNAVAILABLE", now=0.0)


def test_attempt_timeout_is_the_cap_or_the_time_left() -> None:
    assert policy().attempt_timeout(now=5.0, deadline=None) is None
    assert policy().attempt_timeout(now=5.0, deadline=7.5) == 2.5
    assert policy(per_attempt_timeout=1.0).attempt_timeout(now=5.0, deadline=7.5) == 1.0
    assert policy(per_attempt_timeout=1.0).attempt_timeout(now=5.0, deadline=5.4) == pytest.approx(0.4)
    assert policy(per_attempt_timeout=1.0).attempt_timeout(now=5.0, deadline=None) == 1.0
    assert policy().attempt_timeout(now=9.0, deadline=8.0) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 9}, "max_attempts"),
        ({"max_attempts": 2.0}, "max_attempts"),
        ({"retryable_codes": frozenset({"OK"})}, "retryable_codes"),
        ({"retryable_codes": frozenset({"NOPE"})}, "retryable_codes"),
        ({"per_attempt_timeout": 0}, "per_attempt_timeout"),
    ],
)
def test_invalid_policy_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        policy(**kwargs)


def test_max_attempts_message() -> None:
    with pytest.raises(ConfigError, match=r"^max_attempts: must be between 1 and 5, got 9$"):
        policy(max_attempts=9)


def test_only_idempotent_levels_mark_a_method_safe_to_repeat() -> None:
    assert idempotent_level("IDEMPOTENT")
    assert idempotent_level("NO_SIDE_EFFECTS")
    assert not idempotent_level("IDEMPOTENCY_UNKNOWN")


def test_streams_retried_only_before_the_first_response() -> None:
    assert stream_retryable(received_any=False)
    assert not stream_retryable(received_any=True)


codes = st.sampled_from(sorted(STATUS_CODE_NAMES))
retry_sets = st.frozensets(st.sampled_from(sorted(STATUS_CODE_NAMES - {"OK"})), max_size=5)
policies = st.builds(
    lambda attempts, retryable, initial, mult, extra, draw: RetryPolicy(
        attempts, retryable, Backoff(initial, mult, initial + extra, rng=lambda: draw)
    ),
    st.integers(min_value=1, max_value=5),
    retry_sets,
    st.floats(min_value=1e-3, max_value=5.0),
    st.floats(min_value=1.0, max_value=4.0),
    st.floats(min_value=0.0, max_value=30.0),
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
pushbacks = st.one_of(st.none(), st.integers(min_value=-100, max_value=100_000).map(str), st.text(max_size=6))


@given(
    policies,
    st.integers(min_value=1, max_value=10),
    codes,
    st.floats(min_value=0.0, max_value=1e6),
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=60.0)),
    pushbacks,
)
def test_decision_properties(
    p: RetryPolicy, attempt: int, code: str, now: float, budget: float | None, pushback: str | None
) -> None:
    deadline = None if budget is None else now + budget
    delay = p.next_delay(attempt, code, now, deadline, pushback)
    if delay is None:
        return
    assert code in p.retryable_codes  # never-retried codes are never retried
    assert attempt + 1 <= p.max_attempts <= 5  # the next attempt stays within the cap
    assert delay >= 0.0
    if deadline is not None:
        assert now + delay < deadline  # no attempt starts at or after the deadline
    if pushback is None:
        assert (
            delay <= min(p.backoff.maximum, p.backoff.initial * p.backoff.multiplier ** (attempt - 1)) + 1e-9
        )
    else:
        assert delay == int(pushback.strip()) / 1000.0


@given(policies, codes)
def test_a_retry_loop_never_exceeds_max_attempts(p: RetryPolicy, code: str) -> None:
    attempts, now = 1, 0.0
    while (delay := p.next_delay(attempts, code, now)) is not None:
        attempts += 1
        now += delay
    assert attempts <= p.max_attempts
    assert attempts == (p.max_attempts if code in p.retryable_codes else 1)
