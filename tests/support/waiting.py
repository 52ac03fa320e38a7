"""Polling for a condition in async tests, bounded, failing the test with what was awaited.

For state that offers nothing to await (a breaker's wait running out, an endpoint set a
background task applies): poll it, never sleep a guessed time. A test without an event loop
(a subprocess or HTTP probe as the predicate) polls the same way with ``wait_until_blocking``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest


async def wait_until(predicate: Callable[[], bool], within: float, what: str, step: float = 0.02) -> float:
    """Poll ``predicate`` until true; returns the seconds it took, fails the test after ``within``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > within:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(step)
    return time.monotonic() - started


def wait_until_blocking(predicate: Callable[[], bool], within: float, what: str, step: float = 0.02) -> float:
    """``wait_until`` for a test that runs no event loop: the same polling, each pause blocking."""
    return asyncio.run(wait_until(predicate, within, what, step))
