"""The breaker's sliding window: exact counts as outcomes enter and the oldest leave."""

from __future__ import annotations

import pytest

from mesh.resilience.window import OutcomeWindow


def test_rates_are_none_below_the_minimum_calls() -> None:
    window = OutcomeWindow(size=5, minimum=3)
    window.add(failed=True, slow=True)
    window.add(failed=True, slow=False)
    assert (window.failure_rate(), window.slow_call_rate()) == (None, None)
    assert window.exceeded(50.0, 50.0) is None
    window.add(failed=False, slow=False)
    assert window.failure_rate() == pytest.approx(200 / 3)
    assert window.slow_call_rate() == pytest.approx(100 / 3)


def test_the_oldest_outcome_leaves_once_the_window_is_full() -> None:
    window = OutcomeWindow(size=3, minimum=1)
    window.add(failed=True, slow=True)  # evicted by the fourth call
    window.add(failed=False, slow=False)
    window.add(failed=True, slow=False)
    assert (window.calls, window.failed, window.slow) == (3, 2, 1)
    window.add(failed=False, slow=False)
    assert (window.calls, window.failed, window.slow) == (3, 1, 0)
    window.add(failed=False, slow=True)  # evicts the second call: neither failed nor slow
    window.add(failed=False, slow=False)  # evicts the third: failed
    assert (window.calls, window.failed, window.slow) == (3, 0, 1)


def test_exceeded_at_either_threshold_inclusive() -> None:
    window = OutcomeWindow(size=4, minimum=4)
    for failed in (True, True, False, False):
        window.add(failed=failed, slow=False)
    assert window.exceeded(50.0, 100.0) is True  # exactly 50 % reaches a 50 % threshold
    assert window.exceeded(50.1, 100.0) is False
    window.add(failed=False, slow=True)  # evicts a failure: 25 % failed, 25 % slow
    assert window.exceeded(30.0, 25.0) is True
    assert window.exceeded(30.0, 26.0) is False


def test_a_window_of_one_holds_only_the_last_call() -> None:
    window = OutcomeWindow(size=1, minimum=1)
    window.add(failed=True, slow=True)
    assert window.failure_rate() == 100.0
    window.add(failed=False, slow=False)
    assert (window.failure_rate(), window.slow_call_rate()) == (0.0, 0.0)
