"""Payment rules, free of I/O: what a valid authorization is, when one is declined, state moves.

A payment moves only forward (AUTHORIZED -> CAPTURED -> REFUNDED, or AUTHORIZED -> VOIDED), so
every move is a conditional UPDATE in the store that at most one concurrent caller wins; the
``may_*`` functions below decide, for the state a caller saw, whether to move, to return the
payment unchanged (a re-sent call), or to refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from mesh.errors import ConfigError
from services.common import idempotency, limits
from services.common.errors import FailedPrecondition, InvalidArgument

DOMAIN = "shop.payment"
NANOS_PER_MINOR = 10_000_000
MAX_NANOS = 999_999_999
# Far above any real payment, far below BIGINT: a bigger amount is a malformed request.
MAX_AMOUNT_MINOR = 10**15
DEFAULT_DECLINE_ABOVE_MINOR = 100_000


class PaymentState(StrEnum):
    AUTHORIZED = "AUTHORIZED"
    CAPTURED = "CAPTURED"
    VOIDED = "VOIDED"
    REFUNDED = "REFUNDED"


@dataclass(frozen=True)
class Amount:
    """An amount as it arrives on the wire (google.type.Money), before validation."""

    currency_code: str
    units: int
    nanos: int


@dataclass(frozen=True)
class Authorization:
    """A validated authorization request; also the terms a re-sent request must repeat."""

    payment_id: str
    order_id: str
    user_id: str
    amount_minor: int
    currency: str


@dataclass(frozen=True)
class PaymentPolicy:
    """The deterministic decline rule, so a decline can be provoked in tests and demos."""

    decline_above_minor: int = DEFAULT_DECLINE_ABOVE_MINOR

    def __post_init__(self) -> None:
        if self.decline_above_minor < 0:
            raise ConfigError(f"PAYMENT_DECLINE_ABOVE_MINOR must be >= 0, got {self.decline_above_minor}")


def policy_from_settings(extra: Mapping[str, str]) -> PaymentPolicy:
    """The policy from ``PAYMENT_*`` variables (``settings.extra``, prefix removed)."""
    raw = extra.get("DECLINE_ABOVE_MINOR", "").strip()
    if not raw:
        return PaymentPolicy()
    try:
        limit = int(raw)
    except ValueError:
        raise ConfigError(f"PAYMENT_DECLINE_ABOVE_MINOR must be an integer, got {raw!r}") from None
    return PaymentPolicy(limit)


def validate_authorization(
    payment_id: str, order_id: str, user_id: str, amount: Amount | None, request_id: str = ""
) -> Authorization:
    """Check an authorization request, reporting every violation at once."""
    violations: dict[str, str] = {}
    limits.require_ids((("payment_id", payment_id), ("order_id", order_id), ("user_id", user_id)), violations)
    problem = limits.request_id_violation(request_id)
    if problem:
        violations["request_id"] = problem
    if amount is None:
        violations["amount"] = "required"
        minor, currency = 0, ""
    else:
        minor, currency = _amount_minor(amount, violations), amount.currency_code
    if violations:
        raise InvalidArgument(violations)
    return Authorization(payment_id, order_id, user_id, minor, currency)


def _amount_minor(amount: Amount, violations: dict[str, str]) -> int:
    """Minor units of ``amount``; adds a violation for each way it is malformed."""
    if not limits.CURRENCY_CODE.fullmatch(amount.currency_code):
        violations["amount.currency_code"] = "must be a three-letter ISO 4217 code such as EUR"
    if abs(amount.nanos) > MAX_NANOS or amount.nanos % NANOS_PER_MINOR:
        violations["amount.nanos"] = "must be a whole number of cents"
    if amount.units and amount.nanos and (amount.units > 0) != (amount.nanos > 0):
        violations["amount"] = "units and nanos must have the same sign"
        return 0
    minor = amount.units * 100 + amount.nanos // NANOS_PER_MINOR
    if minor <= 0:
        violations["amount"] = "must be greater than zero"
    elif minor > MAX_AMOUNT_MINOR:
        violations["amount"] = f"must be at most {format_minor(MAX_AMOUNT_MINOR, amount.currency_code)}"
    return minor


def validate_payment_id(payment_id: str, request_id: str = "") -> None:
    limits.require_id_and_key("payment_id", payment_id, request_id)


def validate_invoice_id(invoice_id: str) -> None:
    limits.require_id("invoice_id", invoice_id)


def check_limit(authorization: Authorization, policy: PaymentPolicy) -> None:
    """Decline (FAILED_PRECONDITION, PAYMENT_DECLINED) an amount above the per-payment limit."""
    if authorization.amount_minor <= policy.decline_above_minor:
        return
    amount = format_minor(authorization.amount_minor, authorization.currency)
    limit = format_minor(policy.decline_above_minor, authorization.currency)
    raise FailedPrecondition(
        "PAYMENT_DECLINED",
        f"payment declined: {amount} is above the per-payment limit of {limit}",
        DOMAIN,
        amount_minor=str(authorization.amount_minor),
        limit_minor=str(policy.decline_above_minor),
        currency=authorization.currency,
    )


def check_replay(existing: Authorization, requested: Authorization) -> None:
    """A re-sent authorization must repeat the original terms: the payment id is its key, and
    another order, user or amount under it is refused (IDEMPOTENCY_KEY_REUSED)."""
    idempotency.check("payment_id", requested.payment_id, existing, requested, DOMAIN)


def may_capture(state: PaymentState) -> bool:
    """Capture moves AUTHORIZED; a captured (or since refunded) payment is returned unchanged."""
    if state is PaymentState.VOIDED:
        raise FailedPrecondition("PAYMENT_VOIDED", "the payment was voided and cannot be captured", DOMAIN)
    return state is PaymentState.AUTHORIZED


def may_void(state: PaymentState) -> bool:
    """Void moves AUTHORIZED and repeats as a no-op; money already taken needs a refund."""
    if state in (PaymentState.CAPTURED, PaymentState.REFUNDED):
        raise FailedPrecondition(
            "PAYMENT_CAPTURED", "the payment was captured and cannot be voided; refund it instead", DOMAIN
        )
    return state is PaymentState.AUTHORIZED


def may_refund(state: PaymentState) -> bool:
    """Refund moves CAPTURED and repeats as a no-op; nothing was taken before a capture."""
    if state in (PaymentState.AUTHORIZED, PaymentState.VOIDED):
        raise FailedPrecondition(
            "PAYMENT_NOT_CAPTURED", f"only a captured payment can be refunded (it is {state.value})", DOMAIN
        )
    return state is PaymentState.CAPTURED


def format_minor(minor: int, currency: str) -> str:
    """``100001, "EUR"`` -> ``"1000.01 EUR"``, for messages people read."""
    sign = "-" if minor < 0 else ""
    units, cents = divmod(abs(minor), 100)
    return f"{sign}{units}.{cents:02d} {currency}"
