"""Exponential backoff with full jitter.

Why full jitter: when an endpoint fails, every caller sees it at once. Delays drawn
uniformly from ``[0, ceiling)`` (AWS's "full jitter") spread their retries out instead of
sending them back in synchronized waves, and the ceiling growing by ``multiplier`` per
retry (capped at ``maximum``) backs off further the longer trouble lasts. The random source
is injectable so tests can pin the draw; the object is otherwise a pure function.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.resilience.validate import FieldError, require_number, require_positive


@dataclass(frozen=True)
class Backoff:
    """``delay(n)`` for the retry that follows ``n`` earlier retries (n = 0 for the first)."""

    initial: float = 0.1
    multiplier: float = 2.0
    maximum: float = 2.0
    rng: Callable[[], float] = field(default=random.random, compare=False, repr=False)
    """Uniform draws in [0, 1); the process-wide ``random.random`` unless injected."""

    def __post_init__(self) -> None:
        require_positive("initial", self.initial)
        if require_number("multiplier", self.multiplier) < 1:
            raise FieldError("multiplier", f"must be >= 1, got {self.multiplier}")
        require_positive("maximum", self.maximum)
        if self.maximum < self.initial:
            raise FieldError(
                "maximum",
                f"must be >= the initial backoff ({self.initial}), got {self.maximum}",
                related=("initial",),
            )

    def ceiling(self, n: int) -> float:
        """The largest delay for retry ``n``: ``min(maximum, initial * multiplier ** n)``."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        try:
            grown = self.initial * self.multiplier**n
        except OverflowError:  # 2.0 ** 2000: long past the cap anyway
            return self.maximum
        return min(self.maximum, grown)

    def delay(self, n: int) -> float:
        """A jittered delay in ``[0, ceiling(n)]`` seconds before retry ``n``."""
        return self.rng() * self.ceiling(n)
