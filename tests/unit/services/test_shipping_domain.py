"""Shipping rules without I/O: validation, the refusal rule, replays, tracking and state moves."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from mesh.errors import ConfigError
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from services.shipping import domain
from services.shipping.domain import Address, Schedule, ShipmentState, ShippingPolicy

TOKYO = Address("Aiko Tanaka", "1-2-3 Shibuya", "Tokyo", "150-0002", "JP")


def fields(error: InvalidArgument) -> set[str]:
    return {name for name, _ in error.violations}


def test_a_valid_schedule_is_stripped() -> None:
    padded = Address("  Aiko Tanaka ", "1-2-3 Shibuya", " Tokyo", "150-0002 ", "JP")
    assert domain.validate_schedule("s-1", "o-1", "u-1", padded) == Schedule("s-1", "o-1", "u-1", TOKYO)


def test_every_violation_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_schedule("", "", "", None)
    assert fields(raised.value) == {
        "shipment_id",
        "order_id",
        "user_id",
        "address.recipient",
        "address.line1",
        "address.city",
        "address.postal_code",
        "address.country_code",
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"recipient": "   "}, "address.recipient"),
        ({"recipient": "x" * 101}, "address.recipient"),
        ({"recipient": "Aiko\nTanaka"}, "address.recipient"),
        ({"line1": "x" * 201}, "address.line1"),
        ({"city": ""}, "address.city"),
        ({"city": "x" * 101}, "address.city"),
        ({"postal_code": "x" * 21}, "address.postal_code"),
        ({"country_code": "jp"}, "address.country_code"),
        ({"country_code": "JPN"}, "address.country_code"),
        ({"country_code": "J"}, "address.country_code"),
        ({"country_code": "JP\n"}, "address.country_code"),
        ({"country_code": ""}, "address.country_code"),
    ],
)
def test_addresses_that_are_refused(change: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_schedule("s", "o", "u", replace(TOKYO, **change))
    assert fields(raised.value) == {field}


def test_fields_at_their_limits_are_accepted() -> None:
    at_limit = Address("x" * 100, "x" * 200, "x" * 100, "x" * 20, "JP")
    assert domain.validate_schedule("s", "o", "u", at_limit).address == at_limit


@pytest.mark.parametrize("shipment_id", ["", "S" * 129, "-s", "a b", "s\n"])
def test_shipment_ids_that_are_refused(shipment_id: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        domain.validate_shipment_id(shipment_id)
    assert fields(raised.value) == {"shipment_id"}


def test_supported_destinations_pass() -> None:
    for country in ("JP", "US", "DE", "FR", "GB", "NL", "IT", "ES", "CA", "AU"):
        domain.check_destination(
            Schedule("s", "o", "u", replace(TOKYO, country_code=country)), ShippingPolicy()
        )


def test_other_destinations_are_refused_by_name() -> None:
    with pytest.raises(FailedPrecondition) as raised:
        domain.check_destination(Schedule("s", "o", "u", replace(TOKYO, country_code="BR")), ShippingPolicy())
    assert raised.value.reason == "DESTINATION_NOT_SUPPORTED"
    assert raised.value.domain == "shop.shipping"
    assert raised.value.metadata == {"country_code": "BR"}
    assert "shipping to 'BR' is not supported" in str(raised.value)


def test_policy_from_settings() -> None:
    assert domain.policy_from_settings({}) == ShippingPolicy()
    custom = domain.policy_from_settings({"SUPPORTED_COUNTRIES": " JP , BR ", "TRANSIT_DAYS": "5"})
    assert custom == ShippingPolicy(frozenset({"JP", "BR"}), 5)
    with pytest.raises(ConfigError, match="two upper-case letters"):
        domain.policy_from_settings({"SUPPORTED_COUNTRIES": "JP,usa"})
    with pytest.raises(ConfigError, match="SHIPPING_TRANSIT_DAYS must be an integer"):
        domain.policy_from_settings({"TRANSIT_DAYS": "soon"})
    with pytest.raises(ConfigError, match=r"within 0\.\.365"):
        domain.policy_from_settings({"TRANSIT_DAYS": "-1"})


def test_a_replay_must_repeat_the_terms() -> None:
    original = Schedule("s", "o", "u", TOKYO)
    domain.check_replay(original, Schedule("s", "o", "u", TOKYO))
    for changed in (
        Schedule("s", "o2", "u", TOKYO),
        Schedule("s", "o", "u2", TOKYO),
        Schedule("s", "o", "u", replace(TOKYO, city="Osaka")),
    ):
        with pytest.raises(AlreadyExists):
            domain.check_replay(original, changed)


def test_tracking_numbers_are_stable_and_distinct() -> None:
    first = domain.tracking_number("s-1")
    assert first == domain.tracking_number("s-1")
    assert first != domain.tracking_number("s-2")
    assert first.startswith("TSG") and len(first) == 19


def test_estimated_delivery_is_the_transit_time_after_creation() -> None:
    created = datetime(2025, 3, 30, 12, 0, tzinfo=UTC)
    assert domain.estimated_delivery(created, ShippingPolicy()) == datetime(2025, 4, 2, 12, 0, tzinfo=UTC)


def test_state_moves() -> None:
    assert domain.may_cancel(ShipmentState.SCHEDULED) is True
    assert domain.may_cancel(ShipmentState.CANCELLED) is False
