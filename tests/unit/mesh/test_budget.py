"""The retry budget, simulated with a fake clock: a dead dependency and healthy traffic."""

from __future__ import annotations

import pytest

from mesh.errors import ConfigError
from mesh.resilience.budget import BudgetConfig, RetryBudget
from mesh.resilience.clock import ManualClock


def simulate(
    budget: RetryBudget,
    clock: ManualClock,
    *,
    seconds: float,
    rate: int,
    failing: float,
    max_attempts: int = 5,
) -> tuple[int, int]:
    """Send ``rate`` requests/s for ``seconds``; a share ``failing`` of attempts fails.

    Each request is retried (up to ``max_attempts``) while it fails and the budget allows.
    Failures are spread deterministically (an error accumulator), not drawn at random.
    Returns (requests, attempts).
    """
    requests = attempts = 0
    error = 0.0
    for _ in range(round(seconds * rate)):
        budget.record_request()
        requests += 1
        for attempt in range(1, max_attempts + 1):
            attempts += 1
            error += failing
            if error < 1.0:
                break  # this attempt succeeded
            error -= 1.0
            if attempt == max_attempts or not budget.try_withdraw():
                break
        clock.advance(1.0 / rate)
    return requests, attempts


@pytest.mark.parametrize("start", [1000.0, 1000.37, 1000.99])
def test_dead_dependency_gets_at_most_1_2_requests_plus_10_per_second(start: float) -> None:
    clock = ManualClock(start)
    budget = RetryBudget(BudgetConfig(), clock=clock)
    requests, attempts = simulate(budget, clock, seconds=10.0, rate=50, failing=1.0)
    assert requests == 500
    bound = 1.2 * requests + 10 * 10.0  # 700
    assert attempts <= bound
    # The budget is spent, not hoarded: without it this would be 5 x 500 = 2500.
    assert attempts >= bound - 1


def test_dead_dependency_over_a_minute_stays_near_the_linkerd_rate() -> None:
    clock = ManualClock()
    budget = RetryBudget(BudgetConfig(), clock=clock)
    requests, attempts = simulate(budget, clock, seconds=60.0, rate=50, failing=1.0)
    assert attempts <= 1.2 * requests + 10 * 60.0
    assert attempts < 2 * requests  # far from the 5x an unbudgeted client would send


def test_healthy_traffic_retries_are_allowed() -> None:
    clock = ManualClock()
    budget = RetryBudget(BudgetConfig(), clock=clock)
    requests, attempts = simulate(budget, clock, seconds=30.0, rate=50, failing=0.05)
    # Every failure got its retry: 5 % of attempts failing means ~5.3 % extra attempts.
    expected = requests / (1 - 0.05)
    assert attempts == pytest.approx(expected, abs=2)
    assert budget.available() > 100


def test_low_traffic_lives_on_the_reserve() -> None:
    clock = ManualClock()
    budget = RetryBudget(BudgetConfig(ratio=0.2, min_retries_per_second=1, ttl=10), clock=clock)
    budget.record_request()
    granted = sum(budget.try_withdraw() for _ in range(20))
    assert granted == 10  # 0.2 earned is not a whole retry; the reserve gives 1/s x 10 s
    assert not budget.try_withdraw()
    clock.advance(11.0)  # the window has moved past every withdrawal
    assert budget.try_withdraw()


def test_ratio_only_budget_earns_one_retry_per_five_requests() -> None:
    clock = ManualClock()
    budget = RetryBudget(BudgetConfig(ratio=0.2, min_retries_per_second=0, ttl=10), clock=clock)
    for _ in range(4):
        budget.record_request()
    assert not budget.try_withdraw()
    budget.record_request()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()


def test_deposits_expire_after_the_ttl() -> None:
    clock = ManualClock(1000.0)
    budget = RetryBudget(BudgetConfig(ratio=1.0, min_retries_per_second=0, ttl=10), clock=clock)
    for _ in range(3):
        budget.record_request()
    clock.advance(10.5)  # still inside the bucket that overlaps now - ttl
    assert budget.available() == 3
    clock.advance(0.6)
    assert budget.available() == 0
    assert not budget.try_withdraw()


def test_long_idle_gap_clears_everything() -> None:
    clock = ManualClock()
    budget = RetryBudget(BudgetConfig(ratio=1.0, min_retries_per_second=0, ttl=10), clock=clock)
    for _ in range(5):
        budget.record_request()
    clock.advance(3600.0)
    assert budget.available() == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"ratio": 1001}, "ratio"),
        ({"min_retries_per_second": -1}, "min_retries_per_second"),
        ({"min_retries_per_second": float("inf")}, "min_retries_per_second"),
        ({"ttl": 0.5}, "ttl"),
        ({"ttl": 61}, "ttl"),
        ({"ttl": "10"}, "ttl"),
    ],
)
def test_invalid_budget_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        BudgetConfig(**kwargs)  # type: ignore[arg-type]
