"""The mesh as a person looks at it: services, instances, edges, resilience, sagas.

Plain frozen values, so the collector (which scrapes), ``mesh top`` (which prints) and the
dashboard (which sends them to a browser as JSON, :func:`as_json`) meet here and nowhere
else. Rates and percentiles are over the collector's window (the difference between two
scrapes), as ``rate()`` and ``histogram_quantile()`` would compute them in Prometheus.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Golden:
    """The golden signals of some calls over the window (None: no call finished in it)."""

    requests_per_second: float = 0.0
    success_rate: float | None = None  # share of calls ending OK (client errors count as failed)
    p50_ms: float | None = None
    p99_ms: float | None = None


@dataclass(frozen=True)
class InstanceView:
    """One registered instance: where it runs, its health in Consul, whether its metrics answered."""

    service: str
    instance_id: str
    address: str
    port: int
    node: str  # the Consul node it registered with: its host
    health: str  # "passing", "warning" or "critical"
    metrics_port: int | None
    scraped: bool  # its /metrics answered this sample
    error: str = ""  # why not, when it did not (shown on the page, never raised)


@dataclass(frozen=True)
class ServiceView:
    """One service: its instances and the calls it served (server side, health checks excluded)."""

    name: str
    instances: tuple[InstanceView, ...]
    inbound: Golden = field(default_factory=Golden)


@dataclass(frozen=True)
class EdgeView:
    """Calls from one service to another, as the caller's mesh channels counted them (per attempt)."""

    source: str
    target: str
    golden: Golden = field(default_factory=Golden)


@dataclass(frozen=True)
class ResilienceView:
    """One caller's resilience state towards one target service, summed over its instances."""

    source: str
    target: str
    open_breakers: tuple[str, ...] = ()  # endpoints ("" = the service-wide breaker) open now
    half_open_breakers: tuple[str, ...] = ()
    ejected_endpoints: int = 0
    ejections_per_second: float = 0.0
    retries_per_second: float = 0.0
    budget_exhausted_per_second: float = 0.0  # retries the budget refused
    fail_fast_per_second: float = 0.0


@dataclass(frozen=True)
class SagaView:
    """The order sagas that are not terminal, from the order service's saga metrics."""

    in_flight_by_state: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    oldest_age_seconds: float | None = None
    compensations_per_second: float = 0.0


@dataclass(frozen=True)
class MeshView:
    """One sample of the whole mesh."""

    at: float  # time.time() of the sample
    window_seconds: float  # what the rates are over (0 on the first sample: no rates yet)
    services: tuple[ServiceView, ...] = ()
    edges: tuple[EdgeView, ...] = ()
    resilience: tuple[ResilienceView, ...] = ()
    sagas: SagaView | None = None  # None: no instance exports saga metrics
    consul_error: str = ""  # Consul did not answer: the view is the last one known, aged


def as_json(view: MeshView) -> dict[str, Any]:
    """The view as JSON-ready data: dataclasses and mappings become dicts, tuples lists.

    Walked by hand rather than with ``dataclasses.asdict``, which deep-copies every value and
    cannot copy the read-only mappings the views hold.
    """

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Mapping):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    data: dict[str, Any] = plain(view)
    return data
