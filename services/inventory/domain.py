"""Inventory rules, free of I/O: what a valid reservation or restock is, and state moves.

Stock itself is decremented in the store with one conditional UPDATE per item, so the rule
"stock never goes negative" holds under any number of concurrent reservations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from services.common.errors import FailedPrecondition, InvalidArgument

DOMAIN = "shop.inventory"
SKU = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_ITEMS = 100
MAX_QUANTITY = 1_000_000


class ReservationState(StrEnum):
    HELD = "HELD"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int


def validate_reservation(reservation_id: str, order_id: str, lines: list[Line]) -> list[Line]:
    """Check a reservation request; lines for the same sku are merged, in sku order."""
    violations: dict[str, str] = {}
    if not ID.fullmatch(reservation_id):
        violations["reservation_id"] = "required; letters, digits and . _ : - (at most 128)"
    if not order_id:
        violations["order_id"] = "required"
    if not lines:
        violations["items"] = "at least one item is required"
    if len(lines) > MAX_ITEMS:
        violations["items"] = f"at most {MAX_ITEMS} items"
    merged: dict[str, int] = {}
    for index, line in enumerate(lines):
        if not SKU.fullmatch(line.sku):
            violations[f"items[{index}].sku"] = "required; letters, digits and . _ - (at most 64)"
        if not 1 <= line.quantity <= MAX_QUANTITY:
            violations[f"items[{index}].quantity"] = f"must be between 1 and {MAX_QUANTITY}"
        merged[line.sku] = merged.get(line.sku, 0) + line.quantity
    if violations:
        raise InvalidArgument(violations)
    # A fixed order (by sku) for the conditional updates keeps concurrent reservations from
    # deadlocking on PostgreSQL row locks.
    return [Line(sku, quantity) for sku, quantity in sorted(merged.items())]


def validate_restock(sku: str, quantity: int) -> None:
    violations: dict[str, str] = {}
    if not SKU.fullmatch(sku):
        violations["sku"] = "required; letters, digits and . _ - (at most 64)"
    if not 1 <= quantity <= MAX_QUANTITY:
        violations["quantity"] = f"must be between 1 and {MAX_QUANTITY}"
    if violations:
        raise InvalidArgument(violations)


def validate_reservation_id(reservation_id: str) -> None:
    if not ID.fullmatch(reservation_id):
        raise InvalidArgument({"reservation_id": "required; letters, digits and . _ : - (at most 128)"})


def insufficient_stock(sku: str, wanted: int, available: int) -> FailedPrecondition:
    return FailedPrecondition(
        "INSUFFICIENT_STOCK",
        f"insufficient stock for '{sku}': wanted {wanted}, available {available}",
        DOMAIN,
        sku=sku,
        wanted=str(wanted),
        available=str(available),
    )


def can_commit(state: ReservationState) -> bool:
    """Committing is allowed from HELD and is a no-op when already COMMITTED."""
    if state is ReservationState.RELEASED:
        raise FailedPrecondition("RESERVATION_RELEASED", "the reservation was released", DOMAIN)
    return state is ReservationState.HELD
