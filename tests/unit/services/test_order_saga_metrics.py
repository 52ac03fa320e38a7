"""The saga metrics: what a runner drives, by state, its oldest age, and the compensations run.

Read as a scrape reads them (prometheus_client's text output, parsed back), so the names and
labels checked are the ones docs/metrics.md documents.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.order.domain import OrderStatus
from services.order.participants import FailureKind, StepFailure
from services.order.saga.definition import ORDER_STEPS
from services.order.saga.metrics import SagaMetrics
from services.order.saga.orchestrator import Orchestrator
from tests.unit.services.test_order_saga_orchestrator import NOW, FakeParticipants, MemoryStore, new_order

PLACED = 1735689600.0  # NOW (2025-01-01T00:00:00Z) in epoch seconds
DOC = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(?P<name>shop_saga_[a-z_]+)` \| (?P<type>\w+) \|(?P<labels>[^|]*)\|")


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def in_flight(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    return {
        dict(labels)["state"]: v for (name, labels), v in samples.items() if name == "shop_saga_in_flight"
    }


def test_every_state_is_exported_even_at_zero() -> None:
    registry = CollectorRegistry()
    SagaMetrics(registry)
    samples = scrape(registry)
    assert in_flight(samples) == {"forward": 0, "compensating": 0, "retrying": 0}
    assert samples[("shop_saga_oldest_in_flight_age_seconds", ())] == 0


def test_states_follow_the_runner_and_the_age_is_from_when_the_order_was_placed() -> None:
    registry, now = CollectorRegistry(), [PLACED + 30]
    metrics = SagaMetrics(registry, wall=lambda: now[0])
    order = new_order()  # PENDING, placed at NOW
    metrics.saw(order)  # not driven here: ignored
    assert sum(in_flight(scrape(registry)).values()) == 0
    metrics.driving(order.order_id)
    metrics.saw(order)
    samples = scrape(registry)
    assert in_flight(samples)["forward"] == 1
    assert samples[("shop_saga_oldest_in_flight_age_seconds", ())] == 30
    metrics.retrying(order.order_id)
    assert in_flight(scrape(registry)) == {"forward": 0, "compensating": 0, "retrying": 1}
    metrics.driving(order.order_id)
    metrics.saw(replace(order, cancel_reason="payment declined"))
    assert in_flight(scrape(registry))["compensating"] == 1
    metrics.done(order.order_id)
    assert sum(in_flight(scrape(registry)).values()) == 0


def test_a_confirmed_order_being_undone_is_as_old_as_its_drive() -> None:
    registry, now = CollectorRegistry(), [PLACED + 86_400]
    metrics = SagaMetrics(registry, wall=lambda: now[0])
    order = replace(new_order(), status=OrderStatus.CONFIRMED, cancel_reason="customer asked")
    metrics.driving(order.order_id)
    metrics.saw(order)
    now[0] += 4
    assert scrape(registry)[("shop_saga_oldest_in_flight_age_seconds", ())] == 4


async def test_the_orchestrator_reports_each_compensation_it_runs() -> None:
    registry = CollectorRegistry()
    metrics = SagaMetrics(registry)
    store = MemoryStore()
    fake = FakeParticipants(
        schedule_shipment=StepFailure(FailureKind.BUSINESS, "shipping", "no route"),
        void_payment=StepFailure(FailureKind.UNAVAILABLE, "payment service", "down"),
    )
    saga = Orchestrator(ORDER_STEPS, store.save, clock=lambda: NOW, compensated=metrics.compensated)
    await saga.run(new_order(), fake)
    samples = scrape(registry)
    counted = {
        (dict(labels)["step"], dict(labels)["outcome"]): value
        for (name, labels), value in samples.items()
        if name == "shop_saga_compensations_total"
    }
    assert counted == {("undo_payment", "failed"): 1, ("release_stock", "compensated"): 1}


def test_the_saga_families_are_the_documented_ones() -> None:
    documented = {
        match["name"]: (match["type"], frozenset(re.findall(r"`([a-z_]+)`", match["labels"])))
        for match in map(ROW.match, DOC.read_text().splitlines())
        if match is not None
    }
    exported = {
        (f"{f.name}_total" if f.type == "counter" else f.name): (f.type, frozenset(f._labelnames))  # type: ignore[attr-defined]
        for f in SagaMetrics().describe()
    }
    assert exported == documented
