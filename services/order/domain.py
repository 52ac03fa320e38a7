"""Order rules, free of I/O: what a valid order is, its price, its states and its saga steps.

An order's progress is its own step history: every step outcome is appended to ``steps``
and the next move (the next forward step, or which completed steps still need undoing) is
derived from that history alone. That is what lets a run be repeated or resumed (a re-sent
CreateOrder, a CancelOrder, later the durable saga log) without remembering anything else.

Duplicate skus in one request are merged into one line (quantities added, first position
kept), the same rule the inventory service applies to reservations; the merged quantity
must still be within the per-line limit.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from services.common.errors import FailedPrecondition, InvalidArgument
from services.order.participants import FailureKind, Participants, StepFailure

DOMAIN = "shop.order"
# Matched with fullmatch: "$" would let a trailing newline through.
SKU = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
COUNTRY = re.compile(r"[A-Z]{2}")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_LINES = 50
MAX_QUANTITY = 1000
MAX_REQUEST_ID = 128
ADDRESS_LIMITS = {"recipient": 100, "line1": 200, "city": 100, "postal_code": 20}
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
    """The address with its text stripped; the limits are the shipping service's, so an order
    we accept is never refused by shipping for its form (only for its destination)."""
    values = {name: getattr(address, name).strip() for name in ADDRESS_LIMITS}
    for name, limit in ADDRESS_LIMITS.items():
        value = values[name]
        if not value:
            violations[f"shipping_address.{name}"] = "required"
        elif len(value) > limit:
            violations[f"shipping_address.{name}"] = f"at most {limit} characters"
        elif CONTROL.search(value):
            violations[f"shipping_address.{name}"] = "must not contain control characters"
    if not COUNTRY.fullmatch(address.country_code):
        violations["shipping_address.country_code"] = (
            "required; ISO 3166-1 alpha-2 in upper case, such as 'JP'"
        )
    return Address(country_code=address.country_code, **values)


def validate_create(lines: Sequence[Line], address: Address | None, request_id: str) -> Draft:
    """Check a CreateOrder request; INVALID_ARGUMENT with one violation per bad field."""
    violations: dict[str, str] = {}
    if not request_id:
        violations["request_id"] = "required (the idempotency key of this order)"
    elif len(request_id) > MAX_REQUEST_ID:
        violations["request_id"] = f"at most {MAX_REQUEST_ID} characters"
    if address is None:
        violations["shipping_address"] = "required"
    else:
        address = _clean_address(address, violations)
    if not lines:
        violations["items"] = "at least one item is required"
    elif len(lines) > MAX_LINES:
        violations["items"] = f"at most {MAX_LINES} lines"
    merged: dict[str, int] = {}
    for index, line in enumerate(lines):
        if not SKU.fullmatch(line.sku):
            violations[f"items[{index}].sku"] = "required; letters, digits and . _ - (at most 64)"
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


class InvalidTransition(FailedPrecondition):
    def __init__(self, order: Order, to: str) -> None:
        super().__init__("INVALID_TRANSITION", f"a {order.status} order cannot {to}", DOMAIN)


def record(
    order: Order, step: SagaStep, outcome: Outcome, detail: str, now: str, uncertain: bool = False
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


def confirm(order: Order, steps: Sequence[SagaStep], now: str) -> Order:
    if order.status is not OrderStatus.PENDING or order.cancel_reason or remaining(steps, order):
        raise InvalidTransition(order, "confirm")
    return replace(order, status=OrderStatus.CONFIRMED, status_reason="", update_time=now)


def cancel(order: Order, steps: Sequence[SagaStep], now: str) -> Order:
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


def remaining(steps: Sequence[SagaStep], order: Order) -> list[SagaStep]:
    """Forward steps not completed yet, in order."""
    return [s for s in steps if not order.has(s.name, Outcome.COMPLETED)]


def to_compensate(steps: Sequence[SagaStep], order: Order) -> list[SagaStep]:
    """Steps to undo, in reverse: completed (or uncertain) and not compensated yet."""
    return [
        s
        for s in reversed(steps)
        if s.compensation is not None
        and (order.has(s.name, Outcome.COMPLETED) or order.uncertain(s.name))
        and not order.has(s.name, Outcome.COMPENSATED)
    ]


Call = Callable[[Participants, Order], Awaitable[str]]


@dataclass(frozen=True)
class SagaStep:
    """A step as data: its action, how to undo it, and which order field names what it made."""

    name: str
    action: Call
    compensation: Call | None = None
    sets: str = ""
    # The compensation's own name, for logs and the crash-matrix fault points.
    undo: str = ""


async def undo_payment(participants: Participants, order: Order) -> str:
    """A captured payment is refunded; an authorization is voided.

    A void refused by the payment service means the payment was captured after all (a
    capture whose answer was lost), so it is refunded instead.
    """
    if order.has("capture_payment", Outcome.COMPLETED):
        return await participants.refund_payment(order)
    try:
        return await participants.void_payment(order)
    except StepFailure as failure:
        if failure.kind is not FailureKind.BUSINESS:
            raise
        return await participants.refund_payment(order)


# Capture and commit have no compensation of their own: undoing the payment refunds a
# captured one, and releasing a reservation also returns committed (sold) stock.
ORDER_STEPS: tuple[SagaStep, ...] = (
    SagaStep(
        "reserve_stock",
        lambda p, o: p.reserve_stock(o),
        lambda p, o: p.release_stock(o),
        "reservation_id",
        "release_stock",
    ),
    SagaStep(
        "authorize_payment", lambda p, o: p.authorize_payment(o), undo_payment, "payment_id", "undo_payment"
    ),
    SagaStep(
        "schedule_shipment",
        lambda p, o: p.schedule_shipment(o),
        lambda p, o: p.cancel_shipment(o),
        "shipment_id",
        "cancel_shipment",
    ),
    SagaStep("capture_payment", lambda p, o: p.capture_payment(o)),
    SagaStep("commit_stock", lambda p, o: p.commit_stock(o)),
)
