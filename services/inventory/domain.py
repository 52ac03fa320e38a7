"""Inventory rules, free of I/O: what a valid reservation or restock is, and state moves.

Stock itself is decremented in the store with one conditional UPDATE per item, so the rule
"stock never goes negative" holds under any number of concurrent reservations.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from services.common import limits
from services.common.errors import FailedPrecondition, InvalidArgument

DOMAIN = "shop.inventory"
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


def validate_reservation(
    reservation_id: str, order_id: str, lines: list[Line], request_id: str = ""
) -> list[Line]:
    """Check a reservation request; lines for the same sku are merged, in sku order."""
    violations: dict[str, str] = {}
    limits.require_ids((("reservation_id", reservation_id), ("order_id", order_id)), violations)
    problem = limits.request_id_violation(request_id)
    if problem:
        violations["request_id"] = problem
    if not lines:
        violations["items"] = "at least one item is required"
    if len(lines) > MAX_ITEMS:
        # Not one violation per line of an oversized list: the answer itself must stay small.
        violations["items"] = f"at most {MAX_ITEMS} items"
        raise InvalidArgument(violations)
    merged: dict[str, int] = {}
    for index, line in enumerate(lines):
        problem = limits.sku_violation(line.sku)
        if problem:
            violations[f"items[{index}].sku"] = problem
        if not 1 <= line.quantity <= MAX_QUANTITY:
            violations[f"items[{index}].quantity"] = f"must be between 1 and {MAX_QUANTITY}"
        merged[line.sku] = merged.get(line.sku, 0) + line.quantity
    if violations:
        raise InvalidArgument(violations)
    # A fixed order (by sku) for the conditional updates keeps concurrent reservations from
    # deadlocking on PostgreSQL row locks.
    return [Line(sku, quantity) for sku, quantity in sorted(merged.items())]


def validate_restock(sku: str, quantity: int, request_id: str = "") -> None:
    violations: dict[str, str] = {}
    problem = limits.sku_violation(sku)
    if problem:
        violations["sku"] = problem
    if not 1 <= quantity <= MAX_QUANTITY:
        violations["quantity"] = f"must be between 1 and {MAX_QUANTITY}"
    problem = limits.request_id_violation(request_id)
    if problem:
        violations["request_id"] = problem
    if violations:
        raise InvalidArgument(violations)


def validate_sku(sku: str) -> None:
    problem = limits.sku_violation(sku)
    if problem:
        raise InvalidArgument({"sku": problem})


def validate_reservation_id(reservation_id: str, request_id: str = "") -> None:
    limits.require_id_and_key("reservation_id", reservation_id, request_id)


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
