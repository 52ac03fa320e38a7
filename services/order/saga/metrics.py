"""The order service's saga metrics (``shop_saga_*``), read from the runner's own bookkeeping.

Why from the runner and not the database: every order instance would otherwise report the
same open sagas, and a sum over instances (what ``mesh top`` and Prometheus do) would count
each one once per instance. A runner reports only the sagas it drives, so the sum is the
mesh's; a saga nobody drives right now (its holder died and the lease has not expired yet)
shows again once an instance's resume scan takes it over. ``mesh sagas`` reads the durable
log for the complete list.

The runner tells this object what happens (:meth:`driving`, :meth:`saw`, :meth:`retrying`,
:meth:`done`, :meth:`compensated`) on the event loop; a scrape reads it on the metrics HTTP
thread, from copies taken in one step (as :mod:`mesh.metrics.families` does). Names and
labels are in docs/metrics.md ("Saga metrics"):

    shop_saga_in_flight{state}                   sagas this instance drives: forward,
                                                 compensating, retrying
    shop_saga_oldest_in_flight_age_seconds       age of the oldest of them (0: none)
    shop_saga_compensations_total{step,outcome}  compensations run: compensated or failed
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.order.domain import Order, OrderStatus

STATES = ("forward", "compensating", "retrying")


def _placed(order: Order) -> float | None:
    """When the order was placed (epoch seconds), if its stored time reads."""
    try:
        return datetime.fromisoformat(order.create_time).timestamp()
    except ValueError:
        return None


class SagaMetrics(Collector):
    """What the runner is driving now, and the compensations it has run."""

    def __init__(
        self, registry: CollectorRegistry | None = None, wall: Callable[[], float] = time.time
    ) -> None:
        self._wall = wall
        self._sagas: dict[str, tuple[str, float]] = {}  # order id -> (state, open since)
        self._compensations: dict[tuple[str, str], int] = {}
        self._created = wall()
        if registry is not None:
            registry.register(self)

    def driving(self, order_id: str) -> None:
        """The runner holds the order's lease and is about to run it."""
        state, since = self._sagas.get(order_id, ("forward", self._wall()))
        self._sagas[order_id] = ("forward" if state == "retrying" else state, since)

    def saw(self, order: Order) -> None:
        """A fresh copy of a driven order: its phase, and (PENDING) when its saga began."""
        current = self._sagas.get(order.order_id)
        if current is None:
            return
        since = current[1]
        if order.status is OrderStatus.PENDING:
            placed = _placed(order)
            since = min(since, placed) if placed is not None else since
        self._sagas[order.order_id] = ("compensating" if order.cancel_reason else "forward", since)

    def retrying(self, order_id: str) -> None:
        """The last attempt left the saga open; the runner waits its backoff."""
        current = self._sagas.get(order_id)
        if current is not None:
            self._sagas[order_id] = ("retrying", current[1])

    def done(self, order_id: str) -> None:
        """The drive ended: terminal, handed over, or this process is stopping."""
        self._sagas.pop(order_id, None)

    def compensated(self, step: str, ok: bool) -> None:
        """A compensation ran (``step``: its own name, e.g. release_stock)."""
        key = (step, "compensated" if ok else "failed")
        self._compensations[key] = self._compensations.get(key, 0) + 1

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        in_flight, oldest, compensations = families = self._families()
        sagas = list(self._sagas.values())
        counts = dict.fromkeys(STATES, 0)
        for state, _ in sagas:
            counts[state] = counts.get(state, 0) + 1
        for state, count in counts.items():
            in_flight.add_metric([state], count)
        now = self._wall()
        oldest.add_metric([], max((max(0.0, now - since) for _, since in sagas), default=0.0))
        for (step, outcome), count in list(self._compensations.items()):
            compensations.add_metric([step, outcome], count, created=self._created)
        yield from families

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
        return (
            GaugeMetricFamily(
                "shop_saga_in_flight",
                "Sagas this instance drives that are not terminal, by state.",
                labels=("state",),
            ),
            GaugeMetricFamily(
                "shop_saga_oldest_in_flight_age_seconds",
                "Age of the oldest saga this instance drives (0: none).",
            ),
            CounterMetricFamily(
                "shop_saga_compensations",
                "Compensating steps run, by compensation and outcome (compensated, failed).",
                labels=("step", "outcome"),
            ),
        )
