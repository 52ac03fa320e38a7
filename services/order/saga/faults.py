"""Crash injection for the saga crash matrix: ``ORDER_FAULT_CRASH_AT=<phase>:<name>``.

The durable saga log is only as good as its behaviour when the process dies at the worst
moment, so the order process can be told to die there: ``os._exit(137)`` (what a SIGKILL
looks like to the parent, with no cleanup, no flushed buffers, no released leases). Phases:

- ``before_commit:<step>``: the participant did the step, its outcome is not saved yet;
- ``after_commit:<step>``: the outcome is saved, the next step has not started;
- ``compensating:<undo>``: an undo (``release_stock``, ``undo_payment``, ``cancel_shipment``)
  was done by the participant, its outcome is not saved yet.

Unset means inactive (one comparison per checkpoint). The value is parsed and checked
against the step table at start, so a typo fails the start instead of silently never firing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mesh.errors import ConfigError
from services.order.saga.definition import SagaStep
from services.order.saga.orchestrator import Checkpoint

log = logging.getLogger(__name__)

PHASES = ("before_commit", "after_commit", "compensating")
CRASH_EXIT_CODE = 137
VARIABLE = "ORDER_FAULT_CRASH_AT"


def no_fault(phase: str, name: str) -> None:
    """The checkpoint of a process without fault injection."""


@dataclass(frozen=True)
class CrashAt:
    """One crash point; :meth:`check` is the orchestrator's checkpoint."""

    phase: str
    name: str
    exit: Callable[[int], object] = os._exit

    def check(self, phase: str, name: str) -> None:
        if phase == self.phase and name == self.name:
            log.critical("fault injection: exiting", extra={"crash_at": f"{phase}:{name}"})
            for handler in logging.getLogger().handlers:
                # Best effort: the log line should survive os._exit, but a handler whose stream
                # is already closed must not keep the crash from happening.
                with contextlib.suppress(ValueError, OSError):
                    handler.flush()
            self.exit(CRASH_EXIT_CODE)


def valid_points(steps: Sequence[SagaStep]) -> set[str]:
    """Every ``phase:name`` the step table can reach."""
    points = {f"{phase}:{s.name}" for s in steps for phase in ("before_commit", "after_commit")}
    return points | {f"compensating:{s.undo}" for s in steps if s.undo}


def crash_at_from_env(environ: Mapping[str, str], steps: Sequence[SagaStep]) -> CrashAt | None:
    """The crash point ``ORDER_FAULT_CRASH_AT`` names (None: unset); ConfigError naming the
    valid values when it is not one of them."""
    raw = environ.get(VARIABLE, "").strip()
    if not raw:
        return None
    points = valid_points(steps)
    if raw not in points:
        raise ConfigError(f"{VARIABLE}={raw!r} is not one of: {', '.join(sorted(points))}")
    phase, _, name = raw.partition(":")
    return CrashAt(phase, name)


def checkpoint_for(crash_at: CrashAt | None) -> Checkpoint:
    """The orchestrator's checkpoint: :func:`no_fault`, or the crash point's, logged as armed."""
    if crash_at is None:
        return no_fault
    log.warning("fault injection armed", extra={"crash_at": f"{crash_at.phase}:{crash_at.name}"})
    return crash_at.check
