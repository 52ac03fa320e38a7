"""The two text policies (services/common/limits.py) applied to every field a client sends.

Bidi controls and zero-width characters were refused in display names but accepted in
address lines, so an address could read differently from what it holds. Now every
free-text field follows one policy and every identifier another; each field below refuses
each kind of invisible or line-breaking character as INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.common import limits
from services.common.errors import InvalidArgument
from services.inventory import domain as inventory
from services.order import domain as order
from services.payment import domain as payment
from services.shipping import domain as shipping
from services.user import domain as user

# name -> a character no field may hold
FORBIDDEN = {
    "rlo": "\u202e",  # right-to-left override
    "lri": "\u2066",  # left-to-right isolate
    "pdi": "\u2069",
    "zwsp": "\u200b",
    "zwj": "\u200d",
    "rlm": "\u200f",
    "bom": "\ufeff",
    "nul": "\x00",
    "newline": "\n",
    "cr": "\r",
    "nel": "\x85",  # C1 next line
    "line-separator": "\u2028",
}
ADDRESS = ("recipient", "line1", "city", "postal_code")
GOOD_ADDRESS = {"recipient": "Ada", "line1": "1 Main St", "city": "Tokyo", "postal_code": "100-0001"}


def _order_address(field: str, value: str) -> Callable[[], object]:
    values = {**GOOD_ADDRESS, field: value}
    return lambda: order.validate_create(
        [order.Line("TEA", 1)], order.Address(**values, country_code="JP"), "r-1"
    )


def _shipping_address(field: str, value: str) -> Callable[[], object]:
    values = {**GOOD_ADDRESS, field: value}
    return lambda: shipping.validate_schedule(
        "s-1", "o-1", "u-1", shipping.Address(**values, country_code="JP")
    )


def _cases(value: str) -> list[tuple[str, Callable[[], object]]]:
    """(field named by the violation, a call that validates ``value`` in that field)."""
    text = f"a{value}b"
    return [
        ("display_name", lambda: user.validate_registration("a@example.com", "correct-horse-9", text, "")),
        ("user.display_name", lambda: user.validate_update("usr_1", ["display_name"], text)),
        ("email", lambda: user.validate_registration(f"a{value}@example.com", "correct-horse-9", "Ada", "")),
        *((f"shipping_address.{f}", _order_address(f, text)) for f in ADDRESS),
        *((f"address.{f}", _shipping_address(f, text)) for f in ADDRESS),
        # identifiers
        ("request_id", lambda: user.validate_registration("a@example.com", "correct-horse-9", "Ada", text)),
        ("request_id", lambda: user.validate_update("usr_1", ["display_name"], "Ada", text)),
        ("user.user_id", lambda: user.validate_update(text, ["display_name"], "Ada")),
        ("user_id", lambda: user.validate_user_id(text)),
        (
            "request_id",
            lambda: order.validate_create(
                [order.Line("TEA", 1)], order.Address(**GOOD_ADDRESS, country_code="JP"), text
            ),
        ),
        (
            "items[0].sku",
            lambda: order.validate_create(
                [order.Line(text, 1)], order.Address(**GOOD_ADDRESS, country_code="JP"), "r-1"
            ),
        ),
        ("request_id", lambda: inventory.validate_restock("TEA", 1, text)),
        ("sku", lambda: inventory.validate_sku(text)),
        ("reservation_id", lambda: inventory.validate_reservation(text, "o-1", [inventory.Line("TEA", 1)])),
        ("order_id", lambda: inventory.validate_reservation("r-1", text, [inventory.Line("TEA", 1)])),
        (
            "request_id",
            lambda: inventory.validate_reservation("r-1", "o-1", [inventory.Line("TEA", 1)], text),
        ),
        ("request_id", lambda: inventory.validate_reservation_id("r-1", text)),
        ("request_id", lambda: payment.validate_payment_id("p-1", text)),
        ("payment_id", lambda: payment.validate_payment_id(text)),
        ("invoice_id", lambda: payment.validate_invoice_id(text)),
        ("request_id", lambda: shipping.validate_shipment_id("s-1", text)),
        (
            "request_id",
            lambda: shipping.validate_schedule(
                "s-1", "o-1", "u-1", shipping.Address(**GOOD_ADDRESS, country_code="JP"), text
            ),
        ),
        ("shipment_id", lambda: shipping.validate_shipment_id(text)),
    ]


@pytest.mark.parametrize("kind", sorted(FORBIDDEN))
def test_every_field_refuses_invisible_and_line_breaking_characters(kind: str) -> None:
    accepted = []
    for field, check in _cases(FORBIDDEN[kind]):
        try:
            check()
        except InvalidArgument as error:
            if field not in {f for f, _ in error.violations}:
                accepted.append(f"{field} (violations: {error.violations})")
        else:
            accepted.append(field)
    assert not accepted, f"{kind} accepted in: {accepted}"


def test_the_same_fields_accept_ordinary_text() -> None:
    user.validate_registration("a@example.com", "correct-horse-9", "Zoë Ōtani-Ng", "req-1")
    draft = order.validate_create(
        [order.Line("TEA", 1)],
        order.Address("Zoë Ōtani", "1-2 Chūō, Apt. #3", "Tōkyō", "100 0001", "JP"),
        "req-1",
    )
    assert draft.address.city == "Tōkyō"


def test_free_text_is_stored_trimmed_in_nfc() -> None:
    decomposed = "Zoe\u0308"  # e + combining diaeresis
    draft = order.validate_create(
        [order.Line("TEA", 1)], order.Address(f"  {decomposed} ", "1", "C", "1", "JP"), "req-1"
    )
    assert draft.address.recipient == "Zo\u00eb"
    assert user.validate_update("usr_1", ["display_name"], decomposed) == "Zo\u00eb"


def test_length_is_counted_after_normalization() -> None:
    assert limits.free_text_violation("e\u0301" * 100, 100) is None  # 100 characters once composed
    assert limits.free_text_violation("a" * 101, 100) == "at most 100 characters"


def test_a_whitespace_only_free_text_is_missing() -> None:
    assert limits.free_text_violation("   ", 10) == "required"
    assert limits.free_text_violation("   ", 10, required=False) is None
