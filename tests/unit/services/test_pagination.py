"""services.common.pagination: page size, opaque tokens, the read-ahead row, time|id positions."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.common.pagination import (
    MAX_PAGE_SIZE,
    PageRequest,
    decode_page_token,
    encode_page_token,
    page,
    page_request,
    parse_time_id,
    time_id_position,
)


@dataclass(frozen=True)
class Item:
    create_time: str
    item_id: str


def position(item: Item) -> str:
    return time_id_position(item.create_time, item.item_id)


ITEMS = [Item(f"2025-01-0{n}T00:00:00.000000+00:00", f"itm_{n}") for n in range(1, 6)]


def fields(error: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [name for name, _ in error.value.violations]


def test_a_request_without_size_or_token_is_the_first_page_of_the_default_size() -> None:
    wanted = page_request(0, "")
    assert wanted == PageRequest(size=20, after="") and wanted.fetch == 21


def test_the_size_is_capped_and_never_negative() -> None:
    assert page_request(7, "").size == 7
    assert page_request(10_000, "").size == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument) as raised:
        page_request(-1, "")
    assert fields(raised) == ["page_size"]


@given(st.text(min_size=1, max_size=50))
def test_page_tokens_round_trip(position: str) -> None:
    assert decode_page_token(encode_page_token(position)) == position


@pytest.mark.parametrize(
    "junk",
    ["%%%", "not base64!", "////x", "\u00e9t\u00e9", "a" * 600, base64.b64encode(b"\xff\xfe").decode()],
)
def test_a_token_that_is_not_ours_is_invalid_argument_on_page_token(junk: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        page_request(5, junk)
    assert fields(raised) == ["page_token"]


def test_walking_every_page_sees_each_row_once_in_order() -> None:
    seen: list[Item] = []
    token = ""
    for _ in range(len(ITEMS)):
        wanted = page_request(2, token)
        after = parse_time_id(wanted.after)
        # The store: rows after the position, at most wanted.fetch of them.
        rows = [i for i in ITEMS if after is None or (i.create_time, i.item_id) > after][: wanted.fetch]
        records, token = page(rows, wanted, position)
        seen.extend(records)
        if not token:
            break
    assert seen == ITEMS


def test_the_read_ahead_row_decides_whether_a_next_page_exists() -> None:
    wanted = page_request(2, "")
    records, token = page(ITEMS[:3], wanted, position)  # three rows for a page of two: more follow
    assert records == ITEMS[:2]
    assert decode_page_token(token) == position(ITEMS[1])
    assert page(ITEMS[:2], wanted, position) == (ITEMS[:2], "")  # exactly a page: the last one
    assert page([], wanted, position) == ([], "")


def test_time_id_positions_round_trip_and_reject_forgeries() -> None:
    stamp = "2025-01-01T00:00:00.000001+00:00"
    assert parse_time_id(time_id_position(stamp, "inv_1")) == (stamp, "inv_1")
    assert parse_time_id("") is None
    for forged in ("no-separator", "|inv_1", "2025|", "2025|bad id"):
        with pytest.raises(InvalidArgument) as raised:
            parse_time_id(forged)
        assert fields(raised) == ["page_token"]
    assert decode_page_token(encode_page_token(stamp)) == stamp
