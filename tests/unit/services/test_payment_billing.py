"""Billing's decisions that need no database: what is malformed, what is ignored."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.messaging.consumer import Malformed
from services.common.values import money
from services.payment.billing import issue_invoice
from shop.order.v1 import events_pb2, order_pb2


class RecordingTx:
    """A stand-in transaction that records statements (billing's SQL is tested on real DBs)."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        self.statements.append((sql, tuple(params)))
        return 1


def event(kind: int, **order: Any) -> events_pb2.OrderEvent:
    fields = {"order_id": "ord-1", "user_id": "usr-1", "payment_id": "pay-1", "total": money(4300, "EUR")}
    fields.update(order)
    return events_pb2.OrderEvent(event_id="evt-1", kind=kind, order=order_pb2.Order(**fields))  # type: ignore[arg-type]


def test_a_confirmed_order_gets_an_invoice_for_its_total() -> None:
    tx = RecordingTx()
    issue_invoice(tx, event(events_pb2.ORDER_EVENT_KIND_CONFIRMED))  # type: ignore[arg-type]
    [(sql, params)] = tx.statements
    assert "ON CONFLICT (order_id) DO NOTHING" in sql
    assert params[1:6] == ("pay-1", "ord-1", "usr-1", 4300, "EUR")


@pytest.mark.parametrize("kind", [events_pb2.ORDER_EVENT_KIND_CREATED, events_pb2.ORDER_EVENT_KIND_CANCELLED])
def test_other_events_issue_nothing(kind: int) -> None:
    tx = RecordingTx()
    issue_invoice(tx, event(kind))  # type: ignore[arg-type]
    assert tx.statements == []


@pytest.mark.parametrize(
    "order",
    [
        {"payment_id": ""},
        {"user_id": ""},
        {"total": money(0, "EUR")},
        {"total": money(100, "eur")},
    ],
)
def test_a_confirmed_order_without_what_an_invoice_needs_is_malformed(order: dict[str, Any]) -> None:
    with pytest.raises(Malformed):
        issue_invoice(RecordingTx(), event(events_pb2.ORDER_EVENT_KIND_CONFIRMED, **order))  # type: ignore[arg-type]
