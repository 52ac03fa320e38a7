"""Time as an injectable value: every policy here reads a clock instead of ``time`` directly.

Breakers, budgets and deadlines are all about "how long ago": passing the clock in lets
tests pin exact sequences ("still open at wait - 1 s, half-open at wait + 1 s") without
sleeping, and lets a simulation run ten seconds of traffic in a millisecond.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]
"""A callable returning monotonic seconds (``time.monotonic`` in production)."""


class ManualClock:
    """A clock that moves only when told to; for tests, simulations and benchmarks."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward; moving backwards would break every monotonic assumption."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back (advance({seconds}))")
        self.now += seconds
