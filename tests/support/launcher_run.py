"""Driving `make run`'s launcher from a test: read what it prints, run a documented block.

The README's blocks (tests/integration/test_make_run.py) and the guide's (test_guide.py) are
run as a person runs them, by bash, against a launcher started on free ports.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import subprocess
import threading
import time
from typing import IO

from tests.support.processes import ROOT


def _forward(stream: IO[str], lines: queue.Queue[str]) -> None:
    """Put each line of ``stream`` on ``lines`` until it ends, or is closed under the reader:
    a test that stops the launcher with ``communicate()`` closes it when done."""
    with contextlib.suppress(ValueError):
        for line in stream:
            lines.put(line)


def read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """Lines the process prints, up to the one containing ``marker`` (read on a thread)."""
    assert process.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_forward, args=(process.stdout, lines), daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"launcher never printed {marker!r}:\n{''.join(seen)}")


def run_block(block: str, env: dict[str, str]) -> str:
    """Run a README block with bash, stopping at the first failing line; returns stdout."""
    shell = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shell.returncode == 0, shell.stdout + shell.stderr
    return shell.stdout


def stop_launcher(launcher: subprocess.Popen[str], how: signal.Signals = signal.SIGINT) -> None:
    """Stop a launcher still running the way a user would (Ctrl-C), so it stops its children;
    killed only if it does not finish within 30 s."""
    if launcher.poll() is None:
        launcher.send_signal(how)
        try:
            launcher.wait(30)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
