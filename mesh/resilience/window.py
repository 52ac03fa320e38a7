"""The count-based sliding window behind the breaker: the last N outcomes, O(1) per call.

A ring of small flag values plus running totals, so recording a call and reading both rates
costs the same whether the window holds 5 calls or 1000 (resilience4j's
``FixedSizeSlidingWindowMetrics`` does the same with an array of measurements).
"""

from __future__ import annotations

_FAILED = 1
_SLOW = 2


class OutcomeWindow:
    """The last ``size`` outcomes; rates are judged once ``minimum`` of them are in."""

    __slots__ = ("_next", "_ring", "calls", "failed", "minimum", "size", "slow")

    def __init__(self, size: int, minimum: int) -> None:
        self.size = size
        self.minimum = minimum
        self._ring = [0] * size
        self._next = 0
        self.calls = 0
        self.failed = 0
        self.slow = 0

    def add(self, failed: bool, slow: bool) -> None:
        """Record one outcome, evicting the oldest once the window is full."""
        if self.calls == self.size:
            evicted = self._ring[self._next]
            self.failed -= evicted & _FAILED
            self.slow -= (evicted & _SLOW) >> 1
        else:
            self.calls += 1
        self._ring[self._next] = (_FAILED if failed else 0) | (_SLOW if slow else 0)
        self.failed += failed
        self.slow += slow
        self._next = (self._next + 1) % self.size

    def failure_rate(self) -> float | None:
        """Failures as a percentage of the window, or None below the minimum."""
        return None if self.calls < self.minimum else self.failed * 100.0 / self.calls

    def slow_call_rate(self) -> float | None:
        """Slow calls as a percentage of the window, or None below the minimum."""
        return None if self.calls < self.minimum else self.slow * 100.0 / self.calls

    def exceeded(self, failure_threshold: float, slow_threshold: float) -> bool | None:
        """Whether either rate reached its threshold; None while below the minimum calls."""
        if self.calls < self.minimum:
            return None
        return self.failed * 100.0 >= failure_threshold * self.calls or (
            self.slow * 100.0 >= slow_threshold * self.calls
        )
