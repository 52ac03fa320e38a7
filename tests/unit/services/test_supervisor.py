"""The launcher's restart policy on a fake clock, and the supervisor loop on tiny real processes.

The policy is CrashLoopBackOff's: a dead instance is restarted after 1 s, 2 s, 4 s … capped
at 30 s; an instance that stayed up a minute starts again from 1 s; six exits within three
minutes with no stable run between them are a crash loop, and the supervisor gives up on it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest

from mesh.resilience.backoff import Backoff
from mesh.resilience.clock import ManualClock
from services.supervisor import (
    GiveUp,
    Restart,
    RestartPolicy,
    RestartTracker,
    Supervisor,
    describe_exit,
)


def crash_right_away(tracker: RestartTracker, clock: ManualClock, uptime: float = 0.5) -> Restart | GiveUp:
    """Start, stay up ``uptime`` seconds, die; returns the tracker's decision."""
    tracker.started()
    clock.advance(uptime)
    return tracker.exited()


def test_default_policy_numbers() -> None:
    policy = RestartPolicy()
    assert [policy.backoff.ceiling(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert policy.stable_after == 60
    assert (policy.crash_limit, policy.crash_window) == (6, 180)


def test_backoff_doubles_from_one_second_and_counts_restarts() -> None:
    clock = ManualClock()
    tracker = RestartTracker(RestartPolicy(), clock)
    decisions = []
    for _ in range(5):
        decision = crash_right_away(tracker, clock)
        assert isinstance(decision, Restart)
        decisions.append(decision)
        clock.advance(decision.delay)
    assert [d.delay for d in decisions] == [1, 2, 4, 8, 16]
    assert [d.restart for d in decisions] == [1, 2, 3, 4, 5]


def test_backoff_is_capped() -> None:
    clock = ManualClock()
    # A window short enough that the crash-loop rule never fires: only the cap is under test.
    tracker = RestartTracker(RestartPolicy(crash_window=1.0), clock)
    delays = []
    for _ in range(9):
        decision = crash_right_away(tracker, clock, uptime=5)
        assert isinstance(decision, Restart)
        delays.append(decision.delay)
        clock.advance(decision.delay)
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30, 30]


def test_backoff_resets_after_a_stable_run() -> None:
    clock = ManualClock()
    tracker = RestartTracker(RestartPolicy(), clock)
    for expected in (1, 2, 4):
        decision = crash_right_away(tracker, clock)
        assert isinstance(decision, Restart) and decision.delay == expected
        clock.advance(decision.delay)
    decision = crash_right_away(tracker, clock, uptime=60)  # up a full minute: forgiven
    assert isinstance(decision, Restart) and decision.delay == 1
    clock.advance(decision.delay)
    decision = crash_right_away(tracker, clock, uptime=59.9)  # not quite stable: keeps growing
    assert isinstance(decision, Restart) and decision.delay == 2


def test_a_crash_loop_is_given_up_on_the_sixth_quick_exit() -> None:
    clock = ManualClock()
    tracker = RestartTracker(RestartPolicy(), clock)
    for _ in range(5):
        decision = crash_right_away(tracker, clock, uptime=1.5)
        assert isinstance(decision, Restart)
        clock.advance(decision.delay)
    decision = crash_right_away(tracker, clock, uptime=1.5)
    assert decision == GiveUp(crashes=6, window=180)


def test_slow_crashes_outside_the_window_are_not_a_loop() -> None:
    clock = ManualClock()
    tracker = RestartTracker(RestartPolicy(), clock)
    for _ in range(20):  # up 50 s each time: never stable, but only ~3 exits per 3 minutes
        decision = crash_right_away(tracker, clock, uptime=50)
        assert isinstance(decision, Restart)
        clock.advance(decision.delay)


def test_a_stable_run_also_forgets_earlier_crashes() -> None:
    clock = ManualClock()
    tracker = RestartTracker(RestartPolicy(), clock)
    for _ in range(5):
        decision = crash_right_away(tracker, clock)
        assert isinstance(decision, Restart)
        clock.advance(decision.delay)
    # Five quick exits, then a stable minute: the sixth exit within 3 minutes is not a loop.
    decision = crash_right_away(tracker, clock, uptime=61)
    assert isinstance(decision, Restart) and decision.delay == 1


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        RestartPolicy(stable_after=0)
    with pytest.raises(ValueError):
        RestartPolicy(crash_limit=0)
    with pytest.raises(ValueError):
        RestartPolicy(crash_window=-1)


def test_describe_exit() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(0) == "exit code 0"


@dataclass
class Slot:
    name: str
    port: int
    process: subprocess.Popen[bytes]


def python(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code])


FAST = RestartPolicy(
    backoff=Backoff(initial=0.01, multiplier=2.0, maximum=0.04), stable_after=5, crash_limit=3, crash_window=5
)


def test_supervisor_restarts_a_dead_instance_and_reports_it_serving() -> None:
    lines: list[str] = []
    slot = Slot("inventory", 50054, python("raise SystemExit(3)"))
    slot.process.wait()
    first_pid = slot.process.pid
    spawned: list[subprocess.Popen[bytes]] = []

    def spawn() -> subprocess.Popen[bytes]:
        spawned.append(python("import time; time.sleep(30)"))
        return spawned[-1]

    supervisor = Supervisor(FAST, say=lines.append)
    supervisor.watch(slot, spawn, ready=lambda process: None)
    try:
        supervisor.run(until=lambda: any("SERVING again" in line for line in lines), timeout=10)
        assert slot.process is spawned[0]  # the slot now holds the new process (stop() finds it)
        assert (
            lines[0]
            == f"  inventory  127.0.0.1:50054  pid {first_pid}  exited (exit code 3); restarting in 0.01 s"
        )
        assert f"pid {spawned[0].pid}" in lines[1] and "restarted (restart 1)" in lines[1]
        assert f"pid {spawned[0].pid}" in lines[2] and "SERVING again" in lines[2]
        assert len(lines) == 3
    finally:
        for process in spawned:
            process.kill()
            process.wait()


def test_supervisor_gives_up_after_a_crash_loop_and_says_so() -> None:
    lines: list[str] = []
    slot = Slot("payment", 50053, python("raise SystemExit(1)"))
    slot.process.wait()
    supervisor = Supervisor(FAST, say=lines.append)
    supervisor.watch(slot, lambda: python("raise SystemExit(1)"), ready=lambda process: None)
    supervisor.run(until=lambda: False, timeout=20)  # returns once nothing is left to supervise
    assert sum("exited (exit code 1); restarting in" in line for line in lines) == 2
    assert "crash loop" in lines[-2] and "giving up on it" in lines[-2]
    assert "3 exits within 5 s" in lines[-2]
    assert lines[-1] == "  no payment instance left: the rest of the shop keeps serving"
    assert supervisor.given_up() == ["payment"]
