"""Order rules without I/O: validation, pricing, and state transitions over the step history."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.order import domain
from services.order.domain import Address, Line, Order, OrderStatus, Outcome, Price, validate_create
from services.order.saga.definition import ORDER_STEPS

NOW = "2025-01-01T00:00:00.000000+00:00"
TOKYO = Address("Ada", "1-1 Chiyoda", "Tokyo", "100-0001", "JP")
CATALOG = {"TEA": Price(1250, "EUR"), "CUP": Price(900, "EUR"), "YEN": Price(500, "JPY")}
STEP = {s.name: s for s in ORDER_STEPS}


def violations(error: InvalidArgument) -> set[str]:
    return {field for field, _ in error.violations}


def order_with(*completed: str) -> Order:
    draft = validate_create([Line("TEA", 2), Line("CUP", 1)], TOKYO, "req-1")
    order = domain.new_order("ord_1", "u-1", draft, CATALOG, NOW)
    for name in completed:
        order = domain.record(order, STEP[name], Outcome.COMPLETED, "ok", NOW)
    return order


def test_valid_request_keeps_line_order_and_merges_duplicate_skus() -> None:
    draft = validate_create([Line("TEA", 2), Line("CUP", 1), Line("TEA", 3)], TOKYO, "req-1")
    assert draft.lines == (Line("TEA", 5), Line("CUP", 1))
    assert draft.address == TOKYO and draft.request_id == "req-1"


@pytest.mark.parametrize(
    ("lines", "address", "request_id", "fields"),
    [
        ([], TOKYO, "r", {"items"}),
        ([Line(f"S{i}", 1) for i in range(51)], TOKYO, "r", {"items"}),
        ([Line("", 1)], TOKYO, "r", {"items[0].sku"}),
        ([Line("bad sku!", 1)], TOKYO, "r", {"items[0].sku"}),
        ([Line("TEA", 1), Line("CUP", 0)], TOKYO, "r", {"items[1].quantity"}),
        ([Line("TEA", -4)], TOKYO, "r", {"items[0].quantity"}),
        ([Line("TEA", 1001)], TOKYO, "r", {"items[0].quantity"}),
        ([Line("TEA", 600), Line("TEA", 401)], TOKYO, "r", {"items[1].quantity"}),
        ([Line("TEA", 1)], None, "r", {"shipping_address"}),
        (
            [Line("TEA", 1)],
            Address("", " ", "", "", "jp"),
            "r",
            {
                "shipping_address.recipient",
                "shipping_address.line1",
                "shipping_address.city",
                "shipping_address.postal_code",
                "shipping_address.country_code",
            },
        ),
        ([Line("TEA", 1)], replace(TOKYO, country_code="JPN"), "r", {"shipping_address.country_code"}),
        ([Line("TEA", 1)], replace(TOKYO, city="x" * 101), "r", {"shipping_address.city"}),
        ([Line("TEA", 1)], replace(TOKYO, postal_code="1" * 21), "r", {"shipping_address.postal_code"}),
        ([Line("TEA", 1)], replace(TOKYO, recipient="Ada\nLovelace"), "r", {"shipping_address.recipient"}),
        ([Line("TEA\n", 1)], TOKYO, "r", {"items[0].sku"}),
        ([Line("TEA", 1)], TOKYO, "", {"request_id"}),
        ([Line("TEA", 1)], TOKYO, "r" * 129, {"request_id"}),
        ([Line("", 0)], None, "", {"items[0].sku", "items[0].quantity", "shipping_address", "request_id"}),
    ],
)
def test_invalid_requests_name_every_bad_field(
    lines: list[Line], address: Address | None, request_id: str, fields: set[str]
) -> None:
    with pytest.raises(InvalidArgument) as error:
        validate_create(lines, address, request_id)
    assert violations(error.value) == fields


def test_limits_themselves_are_accepted_and_address_text_is_stripped() -> None:
    lines = [Line(f"S{i}", 1000 if i == 0 else 1) for i in range(50)]
    padded = Address(" Ada ", "x" * 200, "Tokyo\t", "1" * 20, "JP")
    draft = validate_create(lines, padded, "r" * 128)
    assert len(draft.lines) == 50
    assert (draft.address.recipient, draft.address.city) == ("Ada", "Tokyo")


def test_pricing_uses_the_catalog_and_totals_in_minor_units() -> None:
    order = order_with()
    assert [(i.sku, i.quantity, i.unit_price_minor) for i in order.items] == [
        ("TEA", 2, 1250),
        ("CUP", 1, 900),
    ]
    assert (order.total_minor, order.currency) == (3400, "EUR")
    assert order.status is OrderStatus.PENDING and order.steps == ()


def test_pricing_refuses_unknown_skus_and_mixed_currencies() -> None:
    draft = validate_create([Line("TEA", 1), Line("GONE", 1)], TOKYO, "r")
    with pytest.raises(InvalidArgument) as unknown:
        domain.price(draft, CATALOG)
    assert violations(unknown.value) == {"items[1].sku"}
    with pytest.raises(FailedPrecondition) as mixed:
        domain.price(validate_create([Line("TEA", 1), Line("YEN", 1)], TOKYO, "r"), CATALOG)
    assert mixed.value.reason == "MIXED_CURRENCY"


def test_step_keys_are_derived_from_the_order_id() -> None:
    keys = order_with().keys
    assert (keys.reservation_id, keys.payment_id, keys.shipment_id) == (
        "ord_1.reserve",
        "ord_1.pay",
        "ord_1.ship",
    )


def test_completed_steps_fill_in_what_they_created() -> None:
    order = order_with("reserve_stock", "authorize_payment")
    assert (order.reservation_id, order.payment_id, order.shipment_id) == ("ord_1.reserve", "ord_1.pay", "")
    failed = domain.record(order, STEP["schedule_shipment"], Outcome.FAILED, "refused", NOW)
    assert failed.shipment_id == ""


def test_confirm_needs_every_step_and_no_cancellation() -> None:
    with pytest.raises(domain.InvalidTransition):
        domain.confirm(order_with("reserve_stock"), ORDER_STEPS, NOW)
    done = order_with(*STEP)
    assert domain.confirm(done, ORDER_STEPS, NOW).status is OrderStatus.CONFIRMED
    with pytest.raises(domain.InvalidTransition):
        domain.confirm(domain.begin_cancel(done, "changed my mind", NOW), ORDER_STEPS, NOW)


def test_cancel_needs_a_reason_and_every_compensation_done() -> None:
    order = order_with("reserve_stock")
    with pytest.raises(domain.InvalidTransition):
        domain.cancel(order, ORDER_STEPS, NOW)
    cancelling = domain.begin_cancel(order, "first reason", NOW)
    assert domain.begin_cancel(cancelling, "second reason", NOW).cancel_reason == "first reason"
    with pytest.raises(domain.InvalidTransition):
        domain.cancel(cancelling, ORDER_STEPS, NOW)
    undone = domain.record(cancelling, STEP["reserve_stock"], Outcome.COMPENSATED, "released", NOW)
    cancelled = domain.cancel(undone, ORDER_STEPS, NOW)
    assert (cancelled.status, cancelled.status_reason) == (OrderStatus.CANCELLED, "first reason")
    with pytest.raises(domain.InvalidTransition):
        domain.begin_cancel(cancelled, "again", NOW)


def test_compensation_plan_is_reverse_and_skips_steps_without_an_undo() -> None:
    confirmed = domain.confirm(order_with(*STEP), ORDER_STEPS, NOW)
    plan = [s.name for s in domain.to_compensate(ORDER_STEPS, confirmed)]
    assert plan == ["schedule_shipment", "authorize_payment", "reserve_stock"]


def test_uncertain_failures_are_undone_and_refusals_are_not() -> None:
    order = order_with("reserve_stock")
    refused = domain.record(order, STEP["authorize_payment"], Outcome.FAILED, "declined", NOW)
    assert [s.name for s in domain.to_compensate(ORDER_STEPS, refused)] == ["reserve_stock"]
    timed_out = domain.record(
        order, STEP["authorize_payment"], Outcome.FAILED, "timeout", NOW, uncertain=True
    )
    assert [s.name for s in domain.to_compensate(ORDER_STEPS, timed_out)] == [
        "authorize_payment",
        "reserve_stock",
    ]


def test_stuck_keeps_the_status_and_says_what_is_left() -> None:
    order = domain.begin_cancel(order_with("reserve_stock"), "declined", NOW)
    stuck = domain.stuck(order, ["reserve_stock: inventory service is unavailable"], NOW)
    assert stuck.status is OrderStatus.PENDING
    assert "declined" in stuck.status_reason and "inventory service" in stuck.status_reason


def test_the_rules_import_no_participant_no_client_and_no_grpc() -> None:
    """The saga depends on the rules, never the other way: no cycle, no I/O behind the rules."""
    tree = ast.parse(Path(domain.__file__).read_text())
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    assert not {m for m in imported if m.startswith(("services.order", "grpc", "shop."))}
