"""Exponential backoff with full jitter: exact ceilings, pinned draws, and bounds as properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.errors import ConfigError
from mesh.resilience.backoff import Backoff


def fixed(value: float) -> Backoff:
    return Backoff(initial=0.1, multiplier=2.0, maximum=1.0, rng=lambda: value)


def test_ceiling_grows_by_the_multiplier_until_the_cap() -> None:
    b = fixed(0.5)
    assert [b.ceiling(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_delay_is_the_draw_times_the_ceiling() -> None:
    assert fixed(0.5).delay(2) == pytest.approx(0.2)
    assert fixed(0.0).delay(3) == 0.0
    assert fixed(0.999).delay(10) == pytest.approx(0.999)


def test_huge_retry_numbers_do_not_overflow() -> None:
    assert fixed(1.0).ceiling(5000) == 1.0


def test_default_rng_jitters() -> None:
    b = Backoff(initial=1.0, multiplier=1.0, maximum=1.0)
    draws = {b.delay(0) for _ in range(50)}
    assert len(draws) > 1
    assert all(0.0 <= d <= 1.0 for d in draws)


def test_negative_retry_number_is_a_bug() -> None:
    with pytest.raises(ValueError):
        fixed(0.5).delay(-1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial": 0}, "initial"),
        ({"initial": float("inf")}, "initial"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"maximum": 0.05}, "maximum"),
        ({"maximum": "2"}, "maximum"),
    ],
)
def test_invalid_backoff_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        Backoff(**kwargs)  # type: ignore[arg-type]


backoffs = st.builds(
    lambda initial, multiplier, extra: Backoff(initial, multiplier, initial + extra),
    st.floats(min_value=1e-4, max_value=10.0),
    st.floats(min_value=1.0, max_value=10.0),
    st.floats(min_value=0.0, max_value=100.0),
)


@given(
    backoffs,
    st.integers(min_value=0, max_value=200),
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_delay_within_zero_and_min_of_max_and_initial_times_multiplier_to_the_n(
    b: Backoff, n: int, draw: float
) -> None:
    pinned = Backoff(b.initial, b.multiplier, b.maximum, rng=lambda: draw)
    delay = pinned.delay(n)
    bound = min(b.maximum, b.initial * b.multiplier**n) if n < 100 else b.maximum
    assert 0.0 <= delay <= bound * (1 + 1e-12)


@given(backoffs, st.integers(min_value=0, max_value=50))
def test_ceiling_never_shrinks(b: Backoff, n: int) -> None:
    assert b.ceiling(n + 1) >= b.ceiling(n)
