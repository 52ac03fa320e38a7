"""Edge conversions: money in minor units, page tokens, page sizes."""

from __future__ import annotations

import pytest
from google.type import money_pb2
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.common.values import (
    decode_page_token,
    encode_page_token,
    minor_units,
    money,
    page_size,
)


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_money_round_trips_minor_units(amount: int) -> None:
    assert minor_units(money(amount, "EUR"), "amount") == amount


def test_money_rejects_sub_cent_amounts_and_bad_currency() -> None:
    with pytest.raises(InvalidArgument) as sub_cent:
        minor_units(money_pb2.Money(currency_code="EUR", units=1, nanos=5), "amount")
    assert sub_cent.value.violations == [("amount.nanos", "must be a whole number of cents")]
    with pytest.raises(InvalidArgument):
        minor_units(money_pb2.Money(currency_code="eur", units=1), "amount")


@given(st.text(min_size=1, max_size=50))
def test_page_tokens_round_trip(position: str) -> None:
    assert decode_page_token(encode_page_token(position)) == position


@pytest.mark.parametrize("junk", ["%%%", "not base64!", "////x", "\u00e9t\u00e9"])
def test_foreign_page_tokens_are_invalid_argument(junk: str) -> None:
    with pytest.raises(InvalidArgument):
        decode_page_token(junk)


def test_page_size_defaults_and_caps() -> None:
    assert page_size(0) == 20
    assert page_size(7) == 7
    assert page_size(10_000) == 100
    with pytest.raises(InvalidArgument):
        page_size(-1)


def test_currency_with_a_trailing_newline_is_rejected() -> None:
    with pytest.raises(InvalidArgument):
        minor_units(money_pb2.Money(currency_code="EUR\n", units=1), "amount")
