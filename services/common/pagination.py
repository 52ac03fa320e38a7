"""One way to page a list: a page size, an opaque page token, and one row read ahead.

Every List call is keyset-paginated. The store returns rows after a *position* (the sort key
of the previous page's last row) and the page token is that position, base64url-encoded so
clients treat it as opaque; a token that is not one of ours is INVALID_ARGUMENT on
``page_token``, never a server error. The store is asked for one row more than the page holds
(:attr:`PageRequest.fetch`): if it comes back there is another page, so no COUNT is needed,
and :func:`page` drops it and names the next token after the last row kept. Lists sorted by
time then id use the position ``<create_time>|<id>`` (:func:`time_id_position`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from services.common import limits
from services.common.errors import InvalidArgument

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
NOT_OURS = "is not a token returned by this service"


def page_size(requested: int) -> int:
    """The page size to use: 0 means the default, the cap is MAX_PAGE_SIZE."""
    if requested < 0:
        raise InvalidArgument({"page_size": "must not be negative"})
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_page_token(position: str) -> str:
    """An opaque token for the position after the last item of a page."""
    return base64.urlsafe_b64encode(position.encode()).decode()


def decode_page_token(token: str) -> str:
    """The position inside a page token ("" for none); INVALID_ARGUMENT when it was not ours."""
    if not token:
        return ""
    if len(token) > limits.PAGE_TOKEN_MAX:
        raise InvalidArgument({"page_token": NOT_OURS})
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgument({"page_token": NOT_OURS}) from None


@dataclass(frozen=True)
class PageRequest:
    """A checked request for one page: its size and the position it starts after."""

    size: int
    after: str  # the decoded position; "" for the first page

    @property
    def fetch(self) -> int:
        """How many rows to ask the store for: the page and one more, to see if more follow."""
        return self.size + 1


def page_request(requested_size: int, page_token: str) -> PageRequest:
    """A request's ``page_size`` and ``page_token``, checked (INVALID_ARGUMENT naming the field)."""
    return PageRequest(page_size(requested_size), decode_page_token(page_token))


def page(rows: Sequence[T], request: PageRequest, position: Callable[[T], str]) -> tuple[list[T], str]:
    """The page's rows and the next page token ("" on the last page).

    ``rows`` are what the store returned for ``request.fetch``; ``position`` is the sort key
    of a row, as the store's ``after`` argument expects it.
    """
    kept = list(rows[: request.size])
    if len(rows) <= request.size:  # size >= 1, so a row was read ahead and kept is not empty
        return kept, ""
    return kept, encode_page_token(position(kept[-1]))


def time_id_position(create_time: str, item_id: str) -> str:
    """The position after an item of a list sorted by (create_time, id)."""
    return f"{create_time}|{item_id}"


def parse_time_id(position: str) -> tuple[str, str] | None:
    """The (create_time, id) of a decoded position; None for the first page.

    INVALID_ARGUMENT on ``page_token`` when it is not a position :func:`time_id_position`
    wrote (a forged or foreign token that happened to decode).
    """
    if not position:
        return None
    create_time, separator, item_id = position.partition("|")
    if not separator or not create_time or not limits.ID.fullmatch(item_id):
        raise InvalidArgument({"page_token": NOT_OURS})
    return create_time, item_id
