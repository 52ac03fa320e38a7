"""Breaker settings: resilience4j's defaults, the consecutive form, and the checks on codes."""

from __future__ import annotations

import math

import pytest

from mesh.resilience.breaker_config import DEFAULT_FAILURE_CODES, DEFAULT_IGNORED_CODES, BreakerConfig
from mesh.resilience.validate import FieldError


def test_defaults_are_resilience4js() -> None:
    config = BreakerConfig()
    assert (config.window_size, config.minimum_calls, config.failure_rate_threshold) == (100, 100, 50.0)
    assert (config.slow_call_duration, config.open_wait, config.half_open_permits) == (60.0, 60.0, 10)
    assert not DEFAULT_FAILURE_CODES & DEFAULT_IGNORED_CODES
    assert "UNAVAILABLE" in config.failure_codes and "INVALID_ARGUMENT" in config.ignored_codes


def test_consecutive_is_a_full_window_at_one_hundred_percent() -> None:
    config = BreakerConfig.consecutive(3, 7.5)
    assert config == BreakerConfig(
        window_size=3,
        minimum_calls=3,
        failure_rate_threshold=100.0,
        slow_call_duration=math.inf,
        slow_call_rate_threshold=100.0,
        open_wait=7.5,
        half_open_permits=1,
    )


def test_consecutive_names_its_own_field() -> None:
    with pytest.raises(FieldError) as caught:
        BreakerConfig.consecutive(0)
    assert caught.value.field == "consecutive_failures"


def test_code_sets_must_not_overlap() -> None:
    with pytest.raises(
        FieldError, match=r"^ignored_codes: must not overlap failure_codes \(both: NOT_FOUND\)$"
    ):
        BreakerConfig(failure_codes=frozenset({"UNAVAILABLE", "NOT_FOUND"}))


def test_codes_are_checked_and_kept_as_frozensets() -> None:
    with pytest.raises(FieldError) as caught:
        BreakerConfig(failure_codes=frozenset({"UNAVAILABLE", "NOPE"}))
    assert caught.value.field == "failure_codes"
    config = BreakerConfig(failure_codes=frozenset({"INTERNAL"}), ignored_codes=frozenset())
    assert config.failure_codes == frozenset({"INTERNAL"}) and isinstance(config.ignored_codes, frozenset)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("window_size", 0),
        ("minimum_calls", 0),
        ("failure_rate_threshold", 0),
        ("slow_call_rate_threshold", 101),
        ("slow_call_duration", -1.0),
        ("open_wait", math.inf),
        ("half_open_permits", 0),
    ],
)
def test_each_threshold_is_validated_under_its_name(field: str, value: object) -> None:
    with pytest.raises(FieldError) as caught:
        BreakerConfig(**{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field
