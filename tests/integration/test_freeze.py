"""tests.support.freeze: a frozen process is stopped, every thread of it, when freeze returns.

The chaos tests read "frozen" right after freezing a process (a Consul agent must not answer,
a service must not serve). A plain SIGSTOP did not guarantee that: CI saw a Consul agent
answer after its SIGSTOP, because the kill returns before the stop holds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.registry.dev_agent import ConsulDevAgent, consul_answers, find_consul
from tests.support.freeze import all_threads_stopped, freeze, thread_states

ROOT = Path(__file__).resolve().parents[2]
BUSY_THREADS = 4
# Threads that never sleep, so each is running (or waiting for a core) when the SIGSTOP comes.
BUSY = f"""
import threading
def spin():
    while True:
        pass
for _ in range({BUSY_THREADS}):
    threading.Thread(target=spin, daemon=True).start()
print("spinning", flush=True)
spin()
"""


@pytest.fixture
def busy() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, "-c", BUSY], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "spinning\n"
        yield process
    finally:
        process.send_signal(signal.SIGCONT)
        process.kill()
        process.wait()


def test_every_thread_is_stopped_when_freeze_returns(busy: subprocess.Popen[str]) -> None:
    for _ in range(20):  # the race is a few milliseconds wide: try it often
        freeze(busy.pid)
        states = thread_states(busy.pid)
        assert len(states) == BUSY_THREADS + 1 and all_threads_stopped(busy.pid), states
        busy.send_signal(signal.SIGCONT)


def test_a_frozen_consul_agent_answers_nothing(tmp_path: Path) -> None:
    agent = ConsulDevAgent(find_consul(ROOT), tmp_path / "consul.log").start()
    assert agent.process is not None
    try:
        for _ in range(5):
            freeze(agent.process.pid)
            try:
                assert not consul_answers(agent.http_addr)
            finally:
                agent.process.send_signal(signal.SIGCONT)
            assert consul_answers(agent.http_addr)
    finally:
        agent.stop()
