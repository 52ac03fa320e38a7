"""The orders bench's CPU per order: what it counts of processes that came or went."""

from __future__ import annotations

from bench.orders import cpu_per_order


def test_a_server_process_started_during_the_phase_counts_from_zero() -> None:
    """PostgreSQL forks a backend per connection, and services connect during the phase."""
    before = {"order": 1.0, "postgresql:10": 2.0, "rabbitmq:20": 5.0}
    after = {"order": 1.5, "postgresql:10": 2.1, "postgresql:11": 0.3, "rabbitmq:20": 5.2}
    assert cpu_per_order(before, after, confirmed=100) == {
        "order": 5.0,
        "postgresql": 4.0,  # 0.1 s of the old backend and all 0.3 s of the new one
        "rabbitmq": 2.0,
    }


def test_a_pid_reused_by_a_new_process_counts_that_process_from_zero() -> None:
    before = {"postgresql:10": 2.0}
    after = {"postgresql:10": 0.4}
    assert cpu_per_order(before, after, confirmed=100) == {"postgresql": 4.0}


def test_a_process_that_ended_during_the_phase_is_not_counted() -> None:
    before = {"postgresql:10": 2.0, "postgresql:11": 1.0}
    after = {"postgresql:11": 1.2}
    assert cpu_per_order(before, after, confirmed=100) == {"postgresql": 2.0}
