"""Edge conversions: money in minor units (page tokens and sizes: test_pagination.py)."""

from __future__ import annotations

import pytest
from google.type import money_pb2
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.common.values import minor_units, money


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_money_round_trips_minor_units(amount: int) -> None:
    assert minor_units(money(amount, "EUR"), "amount") == amount


def test_money_rejects_sub_cent_amounts_and_bad_currency() -> None:
    with pytest.raises(InvalidArgument) as sub_cent:
        minor_units(money_pb2.Money(currency_code="EUR", units=1, nanos=5), "amount")
    assert sub_cent.value.violations == [("amount.nanos", "must be a whole number of cents")]
    with pytest.raises(InvalidArgument):
        minor_units(money_pb2.Money(currency_code="eur", units=1), "amount")


def test_currency_with_a_trailing_newline_is_rejected() -> None:
    with pytest.raises(InvalidArgument):
        minor_units(money_pb2.Money(currency_code="EUR\n", units=1), "amount")
