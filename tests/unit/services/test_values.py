"""Edge conversions: money in minor units, timestamps (page tokens and sizes: test_pagination.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import timestamp_pb2
from google.type import money_pb2
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.common.values import minor_units, money, timestamp


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


@pytest.mark.parametrize(
    "moment",
    [
        "2026-12-06T05:30:01.123456+00:00",
        "2026-12-06T14:30:01.000001+09:00",
        "1969-12-31T23:59:59.500000+00:00",
        "0001-01-01T00:00:00+00:00",
        "9999-12-31T23:59:59.999999+00:00",
        datetime(2026, 2, 28, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2026, 12, 6, 5, 30, 1, 7),  # naive: local time, as before
    ],
)
def test_the_same_timestamp_as_from_datetime(moment: str | datetime) -> None:
    value = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(value.astimezone(UTC))
    assert timestamp(moment) == expected


@pytest.mark.parametrize("empty", [None, ""])
def test_no_moment_is_the_zero_timestamp(empty: str | None) -> None:
    assert timestamp(empty) == timestamp_pb2.Timestamp()
