"""Order rules, free of I/O: what a valid order is, its price, its states and its step history.

An order's progress is its own step history: every step outcome is appended to ``steps``
and the next move (the next forward step, or which completed steps still need undoing) is
derived from that history alone. That is what lets a run be repeated or resumed (a re-sent
CreateOrder, a CancelOrder, later the durable saga log) without remembering anything else.

Duplicate skus in one request are merged into one line (quantities added, first position
kept), the same rule the inventory service applies to reservations; the merged quantity
must still be within the per-line limit.

The saga's step table lives in :mod:`services.order.saga.definition`; the rules here see a step
only through the small :class:`Step` shape (its name, the id it fills in, whether it can be
undone), so this module imports neither the participants port nor anything that calls out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Protocol, TypeVar

from services.common import idempotency, limits
from services.common.errors import FailedPrecondition, InvalidArgument

DOMAIN = "shop.order"
MAX_LINES = 50
MAX_QUANTITY = 1000
CANCELLED_BY_CUSTOMER = "cancelled by customer"


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"


class Outcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATED = "compensated"


@dataclass(frozen=True)
class Line:
    sku: str
    quantity: int


@dataclass(frozen=True)
class Address:
    recipient: str
    line1: str
    city: str
    postal_code: str
    country_code: str


@dataclass(frozen=True)
class Draft:
    """A validated CreateOrder request, before pricing."""

    lines: tuple[Line, ...]
    address: Address
    request_id: str


@dataclass(frozen=True)
class Price:
    amount_minor: int
    currency: str


@dataclass(frozen=True)
class Item:
    sku: str
    quantity: int
    unit_price_minor: int


@dataclass(frozen=True)
class StepRecord:
    """One entry of the step history. ``uncertain``: a failure after which the participant
    may or may not have acted (a timeout), so the step is undone as if it had completed."""

    name: str
    outcome: Outcome
    detail: str
    time: str
    uncertain: bool = False


@dataclass(frozen=True)
class StepKeys:
    """Participant-side ids derived from the order id, so re-sending any step is safe."""

    reservation_id: str
    payment_id: str
    shipment_id: str


@dataclass(frozen=True)
class Order:
    order_id: str
    user_id: str
    request_id: str
    items: tuple[Item, ...]
    currency: str
    total_minor: int
    address: Address
    create_time: str
    update_time: str
    status: OrderStatus = OrderStatus.PENDING
    status_reason: str = ""
    # Why the order is being undone; non-empty means compensation has begun.
    cancel_reason: str = ""
    reservation_id: str = ""
    payment_id: str = ""
    shipment_id: str = ""
    steps: tuple[StepRecord, ...] = ()
    # Optimistic-concurrency version kept by the store; not part of the document.
    version: int = field(default=0, compare=False)

    @property
    def keys(self) -> StepKeys:
        o = self.order_id
        return StepKeys(f"{o}.reserve", f"{o}.pay", f"{o}.ship")

    def has(self, name: str, outcome: Outcome) -> bool:
        return any(s.name == name and s.outcome is outcome for s in self.steps)

    def uncertain(self, name: str) -> bool:
        return any(s.name == name and s.outcome is Outcome.FAILED and s.uncertain for s in self.steps)


def _clean_address(address: Address, violations: dict[str, str]) -> Address:
    """The address as free text (trimmed, NFC); the limits are the shipping service's, so an
    order we accept is never refused by shipping for its form (only for its destination)."""
    values = {
        name: limits.clean_free_text(f"shipping_address.{name}", getattr(address, name), limit, violations)
        for name, limit in limits.ADDRESS_LIMITS.items()
    }
    if not limits.COUNTRY_CODE.fullmatch(address.country_code):
        violations["shipping_address.country_code"] = (
            "required; ISO 3166-1 alpha-2 in upper case, such as 'JP'"
        )
    return Address(country_code=address.country_code, **values)


def validate_create(lines: Sequence[Line], address: Address | None, request_id: str) -> Draft:
    """Check a CreateOrder request; INVALID_ARGUMENT with one violation per bad field."""
    violations: dict[str, str] = {}
    problem = limits.request_id_violation(request_id, required=True)
    if problem:
        violations["request_id"] = problem
    if address is None:
        violations["shipping_address"] = "required"
    else:
        address = _clean_address(address, violations)
    if not lines:
        violations["items"] = "at least one item is required"
    elif len(lines) > MAX_LINES:
        violations["items"] = f"at most {MAX_LINES} lines"
        raise InvalidArgument(violations)  # not one violation per line of an oversized list
    merged: dict[str, int] = {}
    for index, line in enumerate(lines):
        problem = limits.sku_violation(line.sku)
        if problem:
            violations[f"items[{index}].sku"] = problem
        if not 1 <= line.quantity <= MAX_QUANTITY:
            violations[f"items[{index}].quantity"] = f"must be between 1 and {MAX_QUANTITY}"
            continue
        merged[line.sku] = merged.get(line.sku, 0) + line.quantity
        if merged[line.sku] > MAX_QUANTITY:
            violations[f"items[{index}].quantity"] = (
                f"lines for '{line.sku}' are merged and together exceed {MAX_QUANTITY}"
            )
    if violations:
        raise InvalidArgument(violations)
    assert address is not None
    return Draft(tuple(Line(sku, qty) for sku, qty in merged.items()), address, request_id)


def check_replay(order: Order, draft: Draft) -> None:
    """A re-sent CreateOrder must repeat the order's items and address: the same request_id
    with another body is refused (IDEMPOTENCY_KEY_REUSED), never answered with the first order."""
    idempotency.check(
        "request_id",
        draft.request_id,
        (tuple((item.sku, item.quantity) for item in order.items), order.address),
        (tuple((line.sku, line.quantity) for line in draft.lines), draft.address),
        DOMAIN,
    )


def price(draft: Draft, catalog: Mapping[str, Price]) -> tuple[tuple[Item, ...], str, int]:
    """Items priced from the catalog, the currency and the total (minor units).

    A sku the catalog lacks is the request's fault (INVALID_ARGUMENT on that line); products
    in different currencies cannot be paid with one payment (FAILED_PRECONDITION).
    """
    missing = {
        f"items[{i}].sku": f"no product '{line.sku}' in the catalog"
        for i, line in enumerate(draft.lines)
        if line.sku not in catalog
    }
    if missing:
        raise InvalidArgument(missing)
    currencies = sorted({catalog[line.sku].currency for line in draft.lines})
    if len(currencies) != 1:
        raise FailedPrecondition(
            "MIXED_CURRENCY", f"items are priced in several currencies ({', '.join(currencies)})", DOMAIN
        )
    items = tuple(Item(line.sku, line.quantity, catalog[line.sku].amount_minor) for line in draft.lines)
    return items, currencies[0], sum(item.quantity * item.unit_price_minor for item in items)


def new_order(order_id: str, user_id: str, draft: Draft, catalog: Mapping[str, Price], now: str) -> Order:
    """A PENDING order, priced; no step has run yet."""
    items, currency, total = price(draft, catalog)
    return Order(order_id, user_id, draft.request_id, items, currency, total, draft.address, now, now)


class Step(Protocol):
    """What the order's rules need to know of a saga step."""

    @property
    def name(self) -> str: ...

    @property
    def sets(self) -> str:
        """The :class:`StepKeys` field the step fills in once it completed ("": none)."""
        ...

    @property
    def undoable(self) -> bool: ...


S = TypeVar("S", bound=Step)


class InvalidTransition(FailedPrecondition):
    def __init__(self, order: Order, to: str) -> None:
        super().__init__("INVALID_TRANSITION", f"a {order.status} order cannot {to}", DOMAIN)


def record(
    order: Order, step: Step, outcome: Outcome, detail: str, now: str, uncertain: bool = False
) -> Order:
    """Append one step outcome; a completed step also fills in the id of what it created."""
    entry = StepRecord(step.name, outcome, detail, now, uncertain)
    order = replace(order, steps=(*order.steps, entry), update_time=now)
    if outcome is Outcome.COMPLETED and step.sets:
        order = replace(order, **{step.sets: getattr(order.keys, step.sets)})
    return order


def begin_cancel(order: Order, reason: str, now: str) -> Order:
    """Start undoing the order; the first reason given is the one that sticks."""
    if order.status is OrderStatus.CANCELLED:
        raise InvalidTransition(order, "start cancelling")
    if order.cancel_reason:
        return order
    return replace(order, cancel_reason=reason, update_time=now)


def confirm(order: Order, steps: Sequence[Step], now: str) -> Order:
    if order.status is not OrderStatus.PENDING or order.cancel_reason or remaining(steps, order):
        raise InvalidTransition(order, "confirm")
    return replace(order, status=OrderStatus.CONFIRMED, status_reason="", update_time=now)


def cancel(order: Order, steps: Sequence[Step], now: str) -> Order:
    """CANCELLED once every completed step has been undone."""
    if order.status is OrderStatus.CANCELLED or not order.cancel_reason or to_compensate(steps, order):
        raise InvalidTransition(order, "cancel")
    return replace(order, status=OrderStatus.CANCELLED, status_reason=order.cancel_reason, update_time=now)


def stuck(order: Order, failures: Sequence[str], now: str) -> Order:
    """Some compensation failed: the order keeps its status and says what is left to undo."""
    reason = f"cancellation incomplete ({order.cancel_reason}): {'; '.join(failures)}; re-send CancelOrder"
    return replace(order, status_reason=reason, update_time=now)


def saga_open(order: Order) -> bool:
    """Whether the saga still has work: PENDING, or a cancellation not finished yet (which a
    CONFIRMED order being undone also is)."""
    if order.status is OrderStatus.PENDING:
        return True
    return bool(order.cancel_reason) and order.status is not OrderStatus.CANCELLED


def remaining(steps: Sequence[S], order: Order) -> list[S]:
    """Forward steps not completed yet, in order."""
    return [s for s in steps if not order.has(s.name, Outcome.COMPLETED)]


def to_compensate(steps: Sequence[S], order: Order) -> list[S]:
    """Steps to undo, in reverse: completed (or uncertain) and not compensated yet."""
    return [
        s
        for s in reversed(steps)
        if s.undoable
        and (order.has(s.name, Outcome.COMPLETED) or order.uncertain(s.name))
        and not order.has(s.name, Outcome.COMPENSATED)
    ]
