"""Inventory's pure rules: what a valid reservation and restock are."""

from __future__ import annotations

import pytest

from services.common.errors import FailedPrecondition, InvalidArgument
from services.inventory.domain import (
    Line,
    ReservationState,
    can_commit,
    validate_reservation,
    validate_restock,
)


def test_lines_for_one_sku_are_merged_in_sku_order() -> None:
    lines = validate_reservation("r-1", "o-1", [Line("TEA", 1), Line("CUP", 2), Line("TEA", 3)])
    assert lines == [Line("CUP", 2), Line("TEA", 4)]


@pytest.mark.parametrize(
    ("reservation_id", "order_id", "lines", "fields"),
    [
        ("", "o", [Line("TEA", 1)], {"reservation_id"}),
        ("r-1\n", "o", [Line("TEA", 1)], {"reservation_id"}),
        ("r", "", [Line("TEA", 1)], {"order_id"}),
        ("r", "o", [], {"items"}),
        ("r", "o", [Line("", 1)], {"items[0].sku"}),
        ("r", "o", [Line("TEA\n", 1)], {"items[0].sku"}),
        ("r", "o", [Line("TEA", 0)], {"items[0].quantity"}),
        ("r", "o", [Line("TEA", 1), Line("CUP", -4)], {"items[1].quantity"}),
        ("", "", [], {"reservation_id", "order_id", "items"}),
    ],
)
def test_invalid_reservations_name_every_bad_field(
    reservation_id: str, order_id: str, lines: list[Line], fields: set[str]
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        validate_reservation(reservation_id, order_id, lines)
    assert {field for field, _ in raised.value.violations} == fields


def test_restock_needs_a_positive_quantity() -> None:
    validate_restock("TEA", 1)
    with pytest.raises(InvalidArgument):
        validate_restock("TEA", 0)


def test_commit_rules() -> None:
    assert can_commit(ReservationState.HELD) is True
    assert can_commit(ReservationState.COMMITTED) is False
    with pytest.raises(FailedPrecondition):
        can_commit(ReservationState.RELEASED)
