"""Shipping rules, free of I/O: what a valid shipment is, where we deliver, state moves.

Tracking numbers and delivery estimates are derived, not random, so a re-sent schedule
request and a test can both predict them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from mesh.errors import ConfigError
from services.common import idempotency, limits
from services.common.errors import FailedPrecondition, InvalidArgument

DOMAIN = "shop.shipping"
COUNTRY = limits.COUNTRY_CODE
DEFAULT_SUPPORTED_COUNTRIES = frozenset({"JP", "US", "DE", "FR", "GB", "NL", "IT", "ES", "CA", "AU"})
DEFAULT_TRANSIT_DAYS = 3


class ShipmentState(StrEnum):
    SCHEDULED = "SCHEDULED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True)
class Address:
    recipient: str
    line1: str
    city: str
    postal_code: str
    country_code: str


@dataclass(frozen=True)
class Schedule:
    """A validated schedule request; also the terms a re-sent request must repeat."""

    shipment_id: str
    order_id: str
    user_id: str
    address: Address


@dataclass(frozen=True)
class ShippingPolicy:
    """Where we deliver and how long it takes; the refusal rule can be provoked on purpose."""

    supported_countries: frozenset[str] = field(default=DEFAULT_SUPPORTED_COUNTRIES)
    transit_days: int = DEFAULT_TRANSIT_DAYS

    def __post_init__(self) -> None:
        if not self.supported_countries:
            raise ConfigError("SHIPPING_SUPPORTED_COUNTRIES must list at least one country")
        bad = sorted(c for c in self.supported_countries if not COUNTRY.fullmatch(c))
        if bad:
            raise ConfigError(f"SHIPPING_SUPPORTED_COUNTRIES must be two upper-case letters each, got {bad}")
        if not 0 <= self.transit_days <= 365:
            raise ConfigError(f"SHIPPING_TRANSIT_DAYS must be within 0..365, got {self.transit_days}")


def policy_from_settings(extra: Mapping[str, str]) -> ShippingPolicy:
    """The policy from ``SHIPPING_*`` variables (``settings.extra``, prefix removed)."""
    countries = [c.strip() for c in extra.get("SUPPORTED_COUNTRIES", "").split(",") if c.strip()]
    raw_days = extra.get("TRANSIT_DAYS", "").strip()
    try:
        days = int(raw_days) if raw_days else DEFAULT_TRANSIT_DAYS
    except ValueError:
        raise ConfigError(f"SHIPPING_TRANSIT_DAYS must be an integer, got {raw_days!r}") from None
    return ShippingPolicy(frozenset(countries) if countries else DEFAULT_SUPPORTED_COUNTRIES, days)


def validate_schedule(
    shipment_id: str, order_id: str, user_id: str, address: Address | None, request_id: str = ""
) -> Schedule:
    """Check a schedule request, reporting every violation at once; text is stored as free text."""
    violations: dict[str, str] = {}
    limits.require_ids(
        (("shipment_id", shipment_id), ("order_id", order_id), ("user_id", user_id)), violations
    )
    problem = limits.request_id_violation(request_id)
    if problem:
        violations["request_id"] = problem
    clean = _clean_address(address or Address("", "", "", "", ""), violations)
    if violations:
        raise InvalidArgument(violations)
    return Schedule(shipment_id, order_id, user_id, clean)


def _clean_address(address: Address, violations: dict[str, str]) -> Address:
    values = {
        name: limits.clean_free_text(f"address.{name}", getattr(address, name), limit, violations)
        for name, limit in limits.ADDRESS_LIMITS.items()
    }
    if not COUNTRY.fullmatch(address.country_code):
        violations["address.country_code"] = "must be an ISO 3166-1 alpha-2 code in upper case, such as JP"
    return Address(country_code=address.country_code, **values)


def validate_shipment_id(shipment_id: str, request_id: str = "") -> None:
    limits.require_id_and_key("shipment_id", shipment_id, request_id)


def check_destination(schedule: Schedule, policy: ShippingPolicy) -> None:
    """Refuse (FAILED_PRECONDITION, DESTINATION_NOT_SUPPORTED) a country we do not deliver to."""
    country = schedule.address.country_code
    if country in policy.supported_countries:
        return
    raise FailedPrecondition(
        "DESTINATION_NOT_SUPPORTED",
        f"shipping to '{country}' is not supported (we deliver to {', '.join(sorted(policy.supported_countries))})",
        DOMAIN,
        country_code=country,
    )


def check_replay(existing: Schedule, requested: Schedule) -> None:
    """A re-sent schedule request must repeat the original terms: the shipment id is its key,
    and another order, user or address under it is refused (IDEMPOTENCY_KEY_REUSED)."""
    idempotency.check("shipment_id", requested.shipment_id, existing, requested, DOMAIN)


def tracking_number(shipment_id: str) -> str:
    """``TSG`` and 16 hex digits of the shipment id's SHA-256: stable across re-sent requests."""
    return "TSG" + hashlib.sha256(shipment_id.encode()).hexdigest()[:16].upper()


def estimated_delivery(create_time: datetime, policy: ShippingPolicy) -> datetime:
    return create_time + timedelta(days=policy.transit_days)


def may_cancel(state: ShipmentState) -> bool:
    """Cancel moves SCHEDULED; a cancelled shipment is returned unchanged (a re-sent compensation)."""
    return state is ShipmentState.SCHEDULED
