"""Id formats and field limits (services/common/limits.py) and each service's use of them.

An unbounded id echoed into a status message used to make the answer's trailer larger than
grpc-core's metadata limit, so a plain refusal arrived as a transport failure. These tests
pin the bounds, that every service applies them to what a client can send, and that no
status, however it is made, can outgrow the trailer limit.
"""

from __future__ import annotations

import grpc
import pytest

from services.common import limits
from services.common.errors import InvalidArgument, NotFound, to_status
from services.common.pagination import decode_page_token
from services.inventory import domain as inventory
from services.order import domain as order
from services.order.servicer import require_order_id
from services.payment import domain as payment
from services.shipping import domain as shipping
from services.user import domain as user

LONG = "x" * 5000
# grpc-core's default soft limit on received metadata: above it, calls start to fail.
METADATA_SOFT_LIMIT = 8 * 1024


def _fields(error: pytest.ExceptionInfo[InvalidArgument]) -> set[str]:
    return {field for field, _ in error.value.violations}


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("ord_" + "a" * 32, True),
        ("a" * limits.ID_MAX, True),
        ("a" * (limits.ID_MAX + 1), False),
        ("ord_1.reserve", True),
        ("k:1-2_3", True),
        ("", False),
        ("-leading", False),
        ("ord_1\n", False),
        ("has space", False),
        ("ünï", False),
        (LONG, False),
    ],
)
def test_the_id_format(value: str, ok: bool) -> None:
    assert (limits.id_violation(value) is None) is ok


def test_a_request_id_may_be_empty_unless_required_and_is_otherwise_an_id() -> None:
    assert limits.request_id_violation("") is None
    assert limits.request_id_violation("", required=True)
    assert limits.request_id_violation(f"bench-{'0' * 32}") is None
    assert limits.request_id_violation(LONG) == limits.REQUEST_ID_RULE


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("Ada Lovelace", None),
        ("", "required"),
        ("a" * 100, None),
        ("a" * 101, "at most 100 characters"),
        ("tab\there", limits.UNPRINTABLE_RULE),
        ("c1\x85", limits.UNPRINTABLE_RULE),
        ("zero\u200bwidth", limits.UNPRINTABLE_RULE),
    ],
)
def test_free_text_is_bounded_and_printable(value: str, problem: str | None) -> None:
    assert limits.free_text_violation(value, 100) == problem


def test_an_over_long_page_token_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidArgument) as error:
        decode_page_token("QUJD" * 1000)
    assert _fields(error) == {"page_token"}


@pytest.mark.parametrize(
    ("check", "field"),
    [
        (lambda: require_order_id(LONG), "order_id"),
        (lambda: require_order_id(""), "order_id"),
        (lambda: inventory.validate_sku(LONG), "sku"),
        (lambda: inventory.validate_restock("TEA", 1, LONG), "request_id"),
        (lambda: inventory.validate_reservation_id("r-1", LONG), "request_id"),
        (lambda: inventory.validate_reservation("r-1", LONG, [inventory.Line("TEA", 1)]), "order_id"),
        (lambda: payment.validate_payment_id(LONG), "payment_id"),
        (lambda: payment.validate_payment_id("p-1", LONG), "request_id"),
        (lambda: payment.validate_invoice_id(LONG), "invoice_id"),
        (lambda: shipping.validate_shipment_id("s-1", LONG), "request_id"),
        (lambda: user.validate_user_id(LONG), "user_id"),
        (lambda: user.validate_update("usr_1", ["display_name"], "Ada", LONG), "request_id"),
        (lambda: user.validate_update("usr_1", [LONG], "Ada"), "update_mask.paths[0]"),
        (lambda: user.validate_update("usr_1", ["display_name"] * 11, "Ada"), "update_mask.paths"),
        (
            lambda: order.validate_create(
                [order.Line("TEA", 1)], order.Address("A", "1", "C", "1", "JP"), "bad id!"
            ),
            "request_id",
        ),
    ],
)
def test_each_service_refuses_an_over_long_or_malformed_value_naming_the_field(
    check: object, field: str
) -> None:
    with pytest.raises(InvalidArgument) as error:
        check()  # type: ignore[operator]
    assert field in _fields(error)
    assert LONG not in str(error.value), "the refusal must not quote the value back"


def test_an_oversized_item_list_is_one_violation_not_one_per_line() -> None:
    lines = [inventory.Line(LONG, 0)] * 10_000
    with pytest.raises(InvalidArgument) as error:
        inventory.validate_reservation("r-1", "ord_1", lines)
    assert _fields(error) == {"items"}
    address = order.Address("A", "1", "C", "1", "JP")
    with pytest.raises(InvalidArgument) as error:
        order.validate_create([order.Line(LONG, 0)] * 10_000, address, "req-1")
    assert _fields(error) == {"items"}


def _trailer_bytes(status: grpc.Status) -> int:
    """Bytes on the wire: grpc-message percent-encodes non-ASCII, -bin values are base64."""
    size = sum(1 if 0x20 <= b < 0x7F and b != 0x25 else 3 for b in status.details.encode())
    for key, value in status.trailing_metadata:
        size += len(key) + (-(-len(value) // 3) * 4 if isinstance(value, bytes) else len(value))
    return size


def test_no_status_outgrows_the_trailer_limit() -> None:
    many = InvalidArgument(
        [(f"items[{i}].sku", "required; letters, digits (at most 64)") for i in range(5000)]
    )
    assert len(many.violations) == 20
    for error in (NotFound(f"order '{LONG * 4}' not found"), NotFound("é" * 5000), many):
        status = to_status(error)
        assert len(status.details.encode()) <= 1024
        assert _trailer_bytes(status) < METADATA_SOFT_LIMIT
