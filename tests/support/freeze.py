"""Freezing a process for a test: SIGSTOP, and return once the stop has taken hold.

``kill(pid, SIGSTOP)`` returns once the stop is queued, not once every thread has stopped. On
this 2-core machine with two busy loops beside it, a Consul agent answered an HTTP request
made after its SIGSTOP in 17 tries of 150: its threads were still running or asleep, not
stopped, for up to 12 ms. A test that reads "frozen" right after the kill can therefore see
the process answer (a CI run failed so), and a test that times a reaction from the kill
counts those milliseconds against it. :func:`freeze` waits, bounded, until every thread of
the process is stopped.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

STOP_SECONDS = 5.0
"""How long a stop may take to hold before the test fails (it took at most 12 ms, measured)."""
_POLL_SECONDS = 0.002
_STOPPED = frozenset("tT")  # /proc's states for stopped and stopped under a tracer


def thread_states(pid: int) -> str:
    """The state letter of each thread of ``pid`` (as /proc shows them), sorted; "" once gone."""
    states = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with (task / "stat").open() as stat:
                states.append(stat.read().rsplit(")", 1)[1].split()[0])
    except FileNotFoundError:  # the process, or one of its threads, is gone
        return ""
    return "".join(sorted(states))


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped."""
    states = thread_states(pid)
    return bool(states) and set(states) <= _STOPPED


def freeze(pid: int, within: float = STOP_SECONDS) -> None:
    """SIGSTOP ``pid`` and return once every thread of it is stopped (AssertionError if not
    within ``within`` seconds, naming the threads' states). Resume it with SIGCONT."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + within
    while not all_threads_stopped(pid):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} not stopped {within}s after SIGSTOP: {thread_states(pid)!r}")
        time.sleep(_POLL_SECONDS)
