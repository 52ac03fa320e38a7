"""Fault injection settings and the saga retry backoff: parsed and validated at start."""

from __future__ import annotations

import pytest

from mesh.errors import ConfigError
from services.order.domain import ORDER_STEPS
from services.order.faults import CrashAt, checkpoint_from_settings, no_fault, valid_points
from services.order.runner import SagaSettings, backoff, saga_settings_from_extra


def test_every_boundary_of_the_step_table_is_a_valid_crash_point() -> None:
    points = valid_points(ORDER_STEPS)
    assert len(points) == 2 * len(ORDER_STEPS) + 3
    assert {"before_commit:authorize_payment", "after_commit:commit_stock"} <= points
    assert {
        "compensating:release_stock",
        "compensating:undo_payment",
        "compensating:cancel_shipment",
    } <= points


def test_unset_means_no_fault_and_typos_fail_the_start() -> None:
    assert checkpoint_from_settings({}, ORDER_STEPS) is no_fault
    assert checkpoint_from_settings({"FAULT_CRASH_AT": "  "}, ORDER_STEPS) is no_fault
    for bad in ("before_commit", "before_commit:pay", "during:reserve_stock", "compensating:capture_payment"):
        with pytest.raises(ConfigError, match="ORDER_FAULT_CRASH_AT"):
            checkpoint_from_settings({"FAULT_CRASH_AT": bad}, ORDER_STEPS)


def test_the_crash_fires_only_at_its_own_point_with_code_137() -> None:
    exits: list[int] = []
    crash = CrashAt("after_commit", "schedule_shipment", exit=exits.append)
    crash.check("before_commit", "schedule_shipment")
    crash.check("after_commit", "reserve_stock")
    assert exits == []
    crash.check("after_commit", "schedule_shipment")
    assert exits == [137]


def test_backoff_grows_jittered_and_capped() -> None:
    settings = SagaSettings(retry_base_seconds=0.1, retry_max_seconds=2.0)
    assert backoff(1, settings, rand=lambda: 1.0) == pytest.approx(0.2)
    assert backoff(1, settings, rand=lambda: 0.0) == pytest.approx(0.1)  # never below half
    assert backoff(3, settings, rand=lambda: 1.0) == pytest.approx(0.8)
    assert backoff(1000, settings, rand=lambda: 1.0) == 2.0


def test_saga_settings_are_validated() -> None:
    assert saga_settings_from_extra({"SAGA_LEASE_SECONDS": "2.5"}).lease_seconds == 2.5
    with pytest.raises(ConfigError, match="ORDER_SAGA_LEASE_SECONDS"):
        saga_settings_from_extra({"SAGA_LEASE_SECONDS": "soon"})
    with pytest.raises(ConfigError, match="ORDER_SAGA_RETRY_MAX_SECONDS"):
        saga_settings_from_extra({"SAGA_RETRY_MAX_SECONDS": "0"})
