"""Fault injection and the saga runner's settings (lease, retry backoff): parsed and validated at start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mesh.errors import ConfigError
from mesh.resilience import Backoff
from services.order.saga.definition import ORDER_STEPS
from services.order.saga.faults import CrashAt, checkpoint_for, crash_at_from_env, no_fault, valid_points
from services.order.saga.runner import SagaSettings, saga_settings_from_env


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
    assert crash_at_from_env({}, ORDER_STEPS) is None
    assert crash_at_from_env({"ORDER_FAULT_CRASH_AT": "  "}, ORDER_STEPS) is None
    assert checkpoint_for(None) is no_fault
    armed = crash_at_from_env({"ORDER_FAULT_CRASH_AT": "after_commit:reserve_stock"}, ORDER_STEPS)
    assert armed == CrashAt("after_commit", "reserve_stock")
    assert checkpoint_for(armed) == armed.check
    for bad in ("before_commit", "before_commit:pay", "during:reserve_stock", "compensating:capture_payment"):
        with pytest.raises(ConfigError, match="ORDER_FAULT_CRASH_AT"):
            crash_at_from_env({"ORDER_FAULT_CRASH_AT": bad}, ORDER_STEPS)


def test_the_crash_fires_only_at_its_own_point_with_code_137() -> None:
    exits: list[int] = []
    crash = CrashAt("after_commit", "schedule_shipment", exit=exits.append)
    crash.check("before_commit", "schedule_shipment")
    crash.check("after_commit", "reserve_stock")
    assert exits == []
    crash.check("after_commit", "schedule_shipment")
    assert exits == [137]


def test_the_retry_backoff_is_the_mesh_backoff_doubling_from_the_base_to_the_cap() -> None:
    backoff = SagaSettings(retry_base_seconds=0.1, retry_max_seconds=2.0).retry_backoff
    assert isinstance(backoff, Backoff)
    assert [backoff.ceiling(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0])
    assert backoff.ceiling(1000) == 2.0


def test_saga_settings_are_validated() -> None:
    assert saga_settings_from_env({}) == SagaSettings()
    assert saga_settings_from_env({"ORDER_SAGA_LEASE_SECONDS": "2.5"}).lease_seconds == 2.5
    with pytest.raises(ConfigError, match="ORDER_SAGA_LEASE_SECONDS"):
        saga_settings_from_env({"ORDER_SAGA_LEASE_SECONDS": "soon"})
    with pytest.raises(ConfigError, match="ORDER_SAGA_RETRY_MAX_SECONDS"):
        saga_settings_from_env({"ORDER_SAGA_RETRY_MAX_SECONDS": "0"})
    with pytest.raises(ConfigError, match="ORDER_SAGA_RETRY_MAX_SECONDS must be >= ORDER_SAGA_RETRY_BASE"):
        saga_settings_from_env({"ORDER_SAGA_RETRY_BASE_SECONDS": "5", "ORDER_SAGA_RETRY_MAX_SECONDS": "1"})
    # Only the full variable names count: a prefix-stripped name is not read.
    assert saga_settings_from_env({"SAGA_LEASE_SECONDS": "2.5"}) == SagaSettings()


def test_a_log_handler_on_a_closed_stream_does_not_stop_the_crash(tmp_path: Path) -> None:
    """A root handler left over with a closed stream made the flush raise before the exit."""
    closed = (tmp_path / "log").open("w")
    closed.close()
    handler = logging.StreamHandler(closed)
    root = logging.getLogger()
    root.addHandler(handler)
    exits: list[int] = []
    try:
        CrashAt("after_commit", "reserve_stock", exit=exits.append).check("after_commit", "reserve_stock")
    finally:
        root.removeHandler(handler)
    assert exits == [137]
