"""Rates and percentiles from two scrapes, computed as Prometheus' ``rate()`` and
``histogram_quantile()`` would compute them, so ``mesh top`` and a Grafana panel agree.

Why redo Prometheus' arithmetic here: the mesh must be seeable with no Prometheus running
(a laptop, ``make run``); the collector keeps the previous scrape of every instance and this
module turns the difference into per-second rates, a success rate and p50/p99.

Counter resets follow Prometheus: a counter lower than before started again from zero, so its
whole value is the increase. A restarted process resets every counter at once, and its
counters' ``_created`` times move, so one such sign marks the whole scrape as a fresh start
(:func:`restarted`): no rate ever comes out negative.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.observe.model import Golden
from mesh.observe.scrape import Key, Scrape


def restarted(now: Scrape, before: Scrape) -> bool:
    """Whether the process behind ``now`` started again since ``before`` (a counter went back,
    or a counter's start time changed)."""
    for key in now.monotonic:
        old = before.values.get(key)
        if old is not None and now.values[key] < old:
            return True
    for key, started in now.created.items():
        old_start = before.created.get(key)
        if old_start is not None and old_start != started:
            return True
    return False


def increases(now: Scrape, before: Scrape | None) -> dict[Key, float]:
    """How much every counter and histogram sample grew from ``before`` to ``now`` (never < 0).

    A sample absent before appeared since (the families here make a series on its first
    call), so all of it is new; with no ``before`` at all there is nothing to compare: empty.
    """
    if before is None:
        return {}
    fresh = restarted(now, before)
    grown: dict[Key, float] = {}
    for key in now.monotonic:
        value = now.values[key]
        old = None if fresh else before.values.get(key)
        grown[key] = value if old is None or value < old else value - old
    return grown


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q`` quantile of a cumulative histogram (upper bound -> count), as ``histogram_quantile``.

    Linear interpolation inside the bucket the rank falls in (the first bucket starts at 0);
    a rank in the ``+Inf`` bucket answers the highest finite bound. None without observations.
    """
    items = sorted(buckets.items())
    if not items or items[-1][0] != math.inf or items[-1][1] <= 0:
        return None
    rank = q * items[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in items:
        if count >= rank:
            if bound == math.inf:
                return lower if lower > 0 or len(items) > 1 else None
            if bound <= 0 or count <= below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, max(below, count)  # a smaller count than below is noise: keep order
    return None


@dataclass
class Calls:
    """Per-second rates of some calls, summed over series and instances, ready to become :class:`Golden`."""

    total: float = 0.0  # calls finished per second
    ok: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le (seconds) -> per second, cumulative

    def handled(self, code: str, per_second: float) -> None:
        self.total += per_second
        if code == "OK":
            self.ok += per_second

    def bucket(self, le: str, per_second: float) -> None:
        bound = float(le)  # "+Inf" parses as inf
        self.buckets[bound] = self.buckets.get(bound, 0.0) + per_second

    def golden(self) -> Golden:
        if self.total <= 0:
            return Golden(requests_per_second=0.0)
        p50, p99 = quantile(0.5, self.buckets), quantile(0.99, self.buckets)
        return Golden(
            requests_per_second=self.total,
            success_rate=self.ok / self.total,
            p50_ms=None if p50 is None else p50 * 1000.0,
            p99_ms=None if p99 is None else p99 * 1000.0,
        )
