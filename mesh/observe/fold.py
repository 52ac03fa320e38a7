"""Every instance's numbers folded into one :class:`MeshView`: services, edges, resilience, sagas.

Pure arithmetic over what the collector scraped (no I/O), so it is tested with hand-written
expositions. Families and labels are the contract of docs/metrics.md:

- a service's inbound calls are its instances' ``grpc_server_*`` series (the gateway's, its
  HTTP requests: ``gateway_requests_total``, any status but 1xx-3xx counted as failed);
- an edge is a caller's ``grpc_client_*`` series; the callee is named by the proto service
  (``grpc_service``), which is turned into a Consul service name through what the callees
  themselves serve (:class:`ProtoNames`);
- resilience is the caller's ``mesh_*`` series, already labelled with the Consul name
  (``target_service``);
- sagas are the order service's ``shop_saga_*`` series.

Health checks and reflection are plumbing, not traffic: they are left out everywhere.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mesh.observe.golden import Calls
from mesh.observe.model import EdgeView, InstanceView, MeshView, ResilienceView, SagaView, ServiceView
from mesh.observe.scrape import Key, Scrape

PLUMBING = ("grpc.health.", "grpc.reflection.")  # proto service prefixes that are not traffic
HTTP_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})  # the gateway's own plumbing routes
SAGA_IN_FLIGHT = "shop_saga_in_flight"
SAGA_OLDEST = "shop_saga_oldest_in_flight_age_seconds"
SAGA_COMPENSATIONS = "shop_saga_compensations_total"
_RATES = {
    "mesh_outlier_ejections_total": "ejections",
    "mesh_client_retries_total": "retries",
    "mesh_client_retry_budget_exhausted_total": "budget_exhausted",
    "mesh_client_fail_fast_total": "fail_fast",
}


@dataclass(frozen=True)
class InstanceSample:
    """One instance in one sample: its view, its scrape (None: it did not answer) and its
    per-second rates over ``seconds`` (empty and 0 when there is nothing to compare with yet)."""

    view: InstanceView
    scrape: Scrape | None = None
    rates: Mapping[Key, float] = field(default_factory=dict)
    seconds: float = 0.0


def plumbing(proto: str) -> bool:
    return proto.startswith(PLUMBING)


class ProtoNames:
    """Which Consul service serves a proto service, learned from the servers' own series.

    Kept across samples: a callee that answered once stays known while it is idle. When no
    scraped server reports a proto service (its instances are down, or export no metrics),
    the caller's ``mesh_*`` channel names are a hint (:meth:`hint`); with neither, the proto
    name stands as the target.
    """

    def __init__(self) -> None:
        self._served: dict[str, str] = {}
        self._hinted: dict[str, str] = {}

    def learn(self, samples: Iterable[InstanceSample]) -> None:
        for sample in samples:
            if sample.scrape is None:
                continue
            for name in ("grpc_server_started_total", "grpc_server_handled_total"):
                for labels, _ in sample.scrape.series(name):
                    proto = labels.get("grpc_service", "")
                    if proto and not plumbing(proto):
                        self._served[proto] = sample.view.service

    def hint(self, protos: Iterable[str], channels: Iterable[str]) -> None:
        """A caller calls ``protos`` and has mesh channels to ``channels``: pair the unknown ones,
        by name (``shop.payment.v1.PaymentService`` and ``payment``) or, one of each left, together."""
        unknown = sorted(p for p in set(protos) if p not in self._served)
        left = sorted(set(channels) - set(self._served.values()))
        for proto in list(unknown):
            parts = {part.lower() for part in proto.split(".")}
            named = [channel for channel in left if channel.lower() in parts]
            if len(named) == 1:
                self._hinted[proto] = named[0]
                unknown.remove(proto)
                left.remove(named[0])
        if len(unknown) == 1 and len(left) == 1:
            self._hinted[unknown[0]] = left[0]

    def target(self, proto: str) -> str:
        return self._served.get(proto) or self._hinted.get(proto) or proto


@dataclass
class _Resilience:
    open: set[str] = field(default_factory=set)
    half_open: set[str] = field(default_factory=set)
    ejected: float = 0.0
    rates: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def view(self, source: str, target: str) -> ResilienceView:
        return ResilienceView(
            source=source,
            target=target,
            open_breakers=tuple(sorted(self.open)),
            half_open_breakers=tuple(sorted(self.half_open)),
            ejected_endpoints=int(self.ejected),
            ejections_per_second=self.rates["ejections"],
            retries_per_second=self.rates["retries"],
            budget_exhausted_per_second=self.rates["budget_exhausted"],
            fail_fast_per_second=self.rates["fail_fast"],
        )


def _calls(sample: InstanceSample, side: str, into: dict[str, Calls]) -> set[str]:
    """Add one instance's ``grpc_<side>_*`` rates to ``into`` by proto service; returns the
    proto services it has a series for, each of which gets an entry (an idle edge still shows)."""
    handled, buckets = f"grpc_{side}_handled_total", f"grpc_{side}_handling_seconds_bucket"
    assert sample.scrape is not None
    seen: set[str] = set()
    for (name, pairs), _ in sample.scrape.values.items():
        if name in (handled, f"grpc_{side}_started_total"):
            proto = dict(pairs).get("grpc_service", "")
            if proto and not plumbing(proto):
                seen.add(proto)
                into.setdefault(proto, Calls())
    for (name, pairs), rate in sample.rates.items():
        if name not in (handled, buckets):
            continue
        labels = dict(pairs)
        proto = labels.get("grpc_service", "")
        if not proto or plumbing(proto):
            continue
        calls = into.setdefault(proto, Calls())
        if name == handled:
            calls.handled(labels.get("grpc_code", ""), rate)
        else:
            calls.bucket(labels.get("le", "+Inf"), rate)
    return seen


def _http_calls(sample: InstanceSample, into: dict[str, Calls]) -> None:
    """The gateway's inbound is HTTP (``gateway_requests_total``): a 1xx-3xx status is a success,
    any other failed (as any gRPC code but OK is); its probes are left out, as health checks are."""
    for (name, pairs), rate in sample.rates.items():
        labels = dict(pairs)
        if labels.get("route", "") in HTTP_PROBES:
            continue
        if name == "gateway_requests_total":
            status = labels.get("status", "")
            into.setdefault("http", Calls()).handled("OK" if status[:1] in ("1", "2", "3") else status, rate)
        elif name == "gateway_request_duration_seconds_bucket":
            into.setdefault("http", Calls()).bucket(labels.get("le", "+Inf"), rate)


def _merge(calls: Iterable[Calls]) -> Calls:
    total = Calls()
    for one in calls:
        total.total += one.total
        total.ok += one.ok
        for bound, rate in one.buckets.items():
            total.buckets[bound] = total.buckets.get(bound, 0.0) + rate
    return total


def _resilience(sample: InstanceSample, into: dict[tuple[str, str], _Resilience]) -> set[str]:
    """Fold one caller's ``mesh_*`` series; returns the target services it has channels to."""
    assert sample.scrape is not None
    source, targets = sample.view.service, set()
    for (name, pairs), value in sample.scrape.values.items():
        if not name.startswith("mesh_"):
            continue
        labels = dict(pairs)
        target = labels.get("target_service", "")
        targets.add(target)
        entry = into.setdefault((source, target), _Resilience())
        if name == "mesh_circuit_breaker_state":
            if value >= 2:
                entry.open.add(labels.get("endpoint", ""))
            elif value >= 1:
                entry.half_open.add(labels.get("endpoint", ""))
        elif name == "mesh_outlier_ejected_endpoints":
            entry.ejected += value
    for (name, pairs), rate in sample.rates.items():
        kind = _RATES.get(name)
        if kind is not None:
            into.setdefault((source, dict(pairs).get("target_service", "")), _Resilience()).rates[kind] += (
                rate
            )
    return targets


def _sagas(samples: Sequence[InstanceSample]) -> SagaView | None:
    exporting = [s for s in samples if s.scrape is not None and SAGA_IN_FLIGHT in s.scrape.families]
    if not exporting:
        return None
    by_state: dict[str, int] = defaultdict(int)
    oldest: float | None = None
    compensations = 0.0
    for sample in exporting:
        assert sample.scrape is not None
        count = 0
        for labels, value in sample.scrape.series(SAGA_IN_FLIGHT):
            by_state[labels.get("state", "")] += int(value)
            count += int(value)
        age = sample.scrape.get(SAGA_OLDEST, ())
        if count and age is not None:
            oldest = age if oldest is None else max(oldest, age)
        compensations += sum(rate for (name, _), rate in sample.rates.items() if name == SAGA_COMPENSATIONS)
    return SagaView(
        # A plain dict, not a MappingProxyType: as_json's dataclasses.asdict deep-copies values,
        # and a mappingproxy cannot be copied.
        in_flight_by_state=dict(sorted(by_state.items())),
        oldest_age_seconds=oldest,
        compensations_per_second=compensations,
    )


def fold(
    at: float, services: Iterable[str], samples: Sequence[InstanceSample], protos: ProtoNames
) -> MeshView:
    """The view of one sample; ``services`` are every Consul service, also those with no instance."""
    protos.learn(samples)
    inbound: dict[str, dict[str, Calls]] = defaultdict(dict)
    outbound: dict[str, dict[str, Calls]] = defaultdict(dict)
    resilience: dict[tuple[str, str], _Resilience] = {}
    for sample in samples:
        if sample.scrape is None:
            continue
        service = sample.view.service
        _calls(sample, "server", inbound[service])
        _http_calls(sample, inbound[service])
        called = _calls(sample, "client", outbound[service])
        protos.hint(called, _resilience(sample, resilience))
    edges: dict[tuple[str, str], list[Calls]] = defaultdict(list)
    for source, by_proto in outbound.items():
        for proto, calls in by_proto.items():
            edges[(source, protos.target(proto))].append(calls)
    instances: dict[str, list[InstanceView]] = {name: [] for name in services}
    for sample in samples:
        instances.setdefault(sample.view.service, []).append(sample.view)
    return MeshView(
        at=at,
        window_seconds=max((s.seconds for s in samples), default=0.0),
        services=tuple(
            ServiceView(
                name,
                tuple(sorted(views, key=lambda v: (v.address, v.port, v.instance_id))),
                _merge(inbound.get(name, {}).values()).golden(),
            )
            for name, views in sorted(instances.items())
        ),
        edges=tuple(
            EdgeView(source, target, _merge(calls).golden())
            for (source, target), calls in sorted(edges.items())
        ),
        resilience=tuple(entry.view(*key) for key, entry in sorted(resilience.items())),
        sagas=_sagas(samples),
    )
