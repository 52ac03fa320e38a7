"""A retry budget per target service, after Linkerd's (tower's ``TpsBudget``, Finagle's).

Why: per-call retry limits do not bound load. A dependency that fails every call would see
``max_attempts`` times its normal traffic, just when it can least take it. A budget caps
retries across all calls to one service: over the last ``ttl`` seconds, retries may be at
most ``ratio`` of the requests plus a reserve of ``min_retries_per_second * ttl`` (so a
service with little traffic can still retry). With the defaults (20 %, 10/s, 10 s) a dead
dependency receives at most 1.2 x requests + 10/s x duration attempts.

Counts live in ``SLOTS`` buckets of ``ttl / SLOTS`` seconds plus the current one, and a
bucket is dropped only once everything in it is older than ``ttl``: the window spans
``ttl`` to ``ttl * 1.1`` seconds. Linkerd's window is up to one bucket shorter instead; this
side of the rounding keeps the bound above exact over any stretch of ``ttl`` starting from
a fresh budget, whatever the clock's phase.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from mesh.resilience.clock import Clock
from mesh.resilience.validate import FieldError, require_number

SLOTS = 10


@dataclass(frozen=True)
class BudgetConfig:
    """Linkerd's defaults: retries up to 20 % of requests plus 10 per second, over 10 s."""

    ratio: float = 0.2
    min_retries_per_second: float = 10.0
    ttl: float = 10.0

    def __post_init__(self) -> None:
        if not 0 <= require_number("ratio", self.ratio) <= 1000:
            raise FieldError("ratio", f"must be between 0 and 1000, got {self.ratio}")
        minimum = require_number("min_retries_per_second", self.min_retries_per_second)
        if minimum < 0 or math.isinf(minimum):
            raise FieldError("min_retries_per_second", f"must be >= 0 and finite, got {minimum}")
        if not 1 <= require_number("ttl", self.ttl) <= 60:
            raise FieldError("ttl", f"must be between 1 and 60 seconds, got {self.ttl}")

    @property
    def reserve(self) -> float:
        """Retries allowed per window regardless of traffic."""
        return self.min_retries_per_second * self.ttl


class RetryBudget:
    """Deposits per request, withdrawals per retry, over a sliding window of ``ttl``.

    Confined to one event loop like the breaker: synchronous updates, no lock.
    """

    def __init__(self, config: BudgetConfig | None = None, *, clock: Clock = time.monotonic) -> None:
        self.config = config or BudgetConfig()
        self._clock = clock
        self._width = self.config.ttl / SLOTS
        self._requests = [0] * (SLOTS + 1)
        self._retries = [0] * (SLOTS + 1)
        self._generation = math.floor(clock() / self._width)
        self._total_requests = 0
        self._total_retries = 0

    def record_request(self) -> None:
        """Count one original request (not a retry): it earns ``ratio`` of a retry."""
        slot = self._advance()
        self._requests[slot] += 1
        self._total_requests += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; False means the retry must not be made."""
        slot = self._advance()
        if self._total_retries + 1 > self._allowance():
            return False
        self._retries[slot] += 1
        self._total_retries += 1
        return True

    def available(self) -> float:
        """How many retries could be withdrawn right now (for a gauge)."""
        self._advance()
        return max(0.0, self._allowance() - self._total_retries)

    def _allowance(self) -> float:
        return self.config.ratio * self._total_requests + self.config.reserve

    def _advance(self) -> int:
        """Drop buckets that have left the window; return the current bucket's slot."""
        generation = math.floor(self._clock() / self._width)
        behind = generation - self._generation
        if behind > 0:
            for step in range(1, min(behind, SLOTS + 1) + 1):
                slot = (self._generation + step) % (SLOTS + 1)
                self._total_requests -= self._requests[slot]
                self._total_retries -= self._retries[slot]
                self._requests[slot] = 0
                self._retries[slot] = 0
            self._generation = generation
        return generation % (SLOTS + 1)
