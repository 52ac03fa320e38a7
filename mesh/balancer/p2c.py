"""Power of two choices on least outstanding requests, optionally weighted by EWMA latency.

Two random candidates, keep the less loaded: nearly as good as scanning every endpoint for
the least loaded one, yet O(1) and without the herd effect of everyone choosing the same
"best" endpoint. A slow endpoint accumulates outstanding calls and so loses the comparison;
with ``ewma=True`` its measured latency counts too (peak-EWMA as in Finagle and Linkerd:
a slow response raises the estimate at once, fast ones bring it down gradually).

This runs on every call, so it is written for the interpreter: no per-call method calls
beyond the two random draws, and the clock is only read when EWMA needs it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from mesh.balancer.base import Outcome, Picked
from mesh.registry.base import Endpoints, ServiceInstance


class _Load:
    """Per-endpoint load: calls in flight and the latency estimate."""

    __slots__ = ("ewma", "outstanding", "stamp")

    def __init__(self, now: float) -> None:
        self.outstanding = 0
        self.ewma = 0.0
        self.stamp = now


class PowerOfTwoChoices:
    """The default balancer: P2C on least outstanding requests."""

    def __init__(
        self,
        *,
        ewma: bool = False,
        decay_seconds: float = 10.0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if decay_seconds <= 0:
            raise ValueError("decay_seconds must be > 0")
        self.ewma = ewma
        self.decay_seconds = decay_seconds
        self._random = (rng or random.Random()).random
        self._clock = clock
        self._loads: dict[str, _Load] = {}

    def _load(self, endpoint: ServiceInstance) -> _Load:
        load = self._loads.get(endpoint.target)
        if load is None:
            load = self._loads[endpoint.target] = _Load(self._clock())
        return load

    def _cost(self, load: _Load) -> float:
        # A tiny floor keeps an endpoint without measurements comparable by its load.
        return (load.outstanding + 1) * max(load.ewma, 1e-6)

    def pick(self, endpoints: Endpoints) -> Picked:
        """The cheaper of two distinct random endpoints (ties go to the first drawn)."""
        count = len(endpoints)
        loads = self._loads
        if count == 1:
            chosen = endpoints[0]
            load = loads.get(chosen.target) or self._load(chosen)
        else:
            first = int(self._random() * count)
            second = int(self._random() * (count - 1))
            if second >= first:
                second += 1
            a, b = endpoints[first], endpoints[second]
            load_a = loads.get(a.target) or self._load(a)
            load_b = loads.get(b.target) or self._load(b)
            if self.ewma:
                take_b = self._cost(load_b) < self._cost(load_a)
            else:
                take_b = load_b.outstanding < load_a.outstanding
            chosen, load = (b, load_b) if take_b else (a, load_a)
        load.outstanding += 1
        if not self.ewma:

            def done(outcome: Outcome) -> None:
                load.outstanding -= 1

            return Picked(chosen, done)

        started = self._clock()

        def observe(outcome: Outcome) -> None:
            load.outstanding -= 1
            if outcome.counted and not outcome.transport_failure:
                self._observe(load, outcome.latency or self._clock() - started)

        return Picked(chosen, observe)

    def _observe(self, load: _Load, latency: float) -> None:
        now = self._clock()
        if latency > load.ewma:
            load.ewma = latency  # peak-sensitive: react to a slowdown at once
        else:
            weight = math.exp(-(now - load.stamp) / self.decay_seconds)
            load.ewma = load.ewma * weight + latency * (1 - weight)
        load.stamp = now

    def update(self, endpoints: Endpoints) -> None:
        """Forget endpoints that left the set (calls still in flight keep their own reference)."""
        keep = {endpoint.target for endpoint in endpoints}
        for target in [t for t in self._loads if t not in keep]:
            del self._loads[target]

    def outstanding(self, endpoint: ServiceInstance) -> int:
        """Calls in flight on ``endpoint`` as this balancer counts them."""
        load = self._loads.get(endpoint.target)
        return load.outstanding if load else 0
