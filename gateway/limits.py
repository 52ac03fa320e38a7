"""Per-principal rate limiting: a token bucket per key, with an injectable clock.

The key is the verified subject (``sub:<id>``) or, for anonymous calls, the client address
(``ip:<addr>``), so one busy user never throttles another. The bucket map is bounded: when
it grows past ``max_keys`` the buckets that have refilled completely (they hold no state
worth keeping) are dropped first, then the oldest.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from gateway.errors import GatewayError


class TokenBucketLimiter:
    """``take(key)`` spends one token; returns 0.0 when allowed, else seconds until one is back."""

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_second <= 0 or burst < 1:
            raise ValueError("rate_per_second must be > 0 and burst >= 1")
        self.rate = rate_per_second
        self.burst = float(burst)
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}

    def take(self, key: str) -> float:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._evict(now)
            self._buckets[key] = [self.burst - 1.0, now]
            return 0.0
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def _evict(self, now: float) -> None:
        full = [
            k
            for k, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.rate >= self.burst
        ]
        for key in full:
            del self._buckets[key]
        while len(self._buckets) >= self.max_keys:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


def too_many_requests(wait_seconds: float) -> GatewayError:
    """429 with Retry-After (whole seconds, at least 1) and a google.rpc.RetryInfo detail."""
    retry_after = max(1, math.ceil(wait_seconds))
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(wait_seconds * 1e9))
    return GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "rate limit exceeded",
        reason="RATE_LIMITED",
        details=[error_details_pb2.RetryInfo(retry_delay=delay)],
        headers=[("retry-after", str(retry_after))],
    )
