"""Id formats, field limits and the two text policies of the shop's contracts, in one place.

Every id and free-text field a client can send has a bound, documented on the field in
protos/shop/*/v1/*.proto and in docs/limits.md, and refused here as INVALID_ARGUMENT naming
the field. Why it matters beyond storage: services quote ids in their answers ("order 'x'
not found"), and an unbounded id made the answer's trailer larger than the peer's metadata
limit, so grpc-core dropped the answer and the client saw a transport failure instead of a
clear 400. With every quoted value bounded, every answer fits.

There are exactly two text policies, and every text field a client sends follows one of
them (docs/limits.md lists which):

* Free text (display names, address lines): one line of printable text, stored with spaces
  (and ASCII whitespace) trimmed and in Unicode NFC, its length counted in characters (code points) after that. Refused:
  every character of Unicode category C -- Cc (C0 and C1 controls, DEL, NUL, tab, newline),
  Cf (the bidi controls U+202A-U+202E and U+2066-U+2069, the marks U+200E, U+200F, U+061C,
  the zero-width U+200B-U+200D, U+2060 and U+FEFF, the soft hyphen), Cs (surrogates), Co
  (private use), Cn (unassigned in this Python's Unicode database) -- and the line and
  paragraph separators (Zl, Zp). An invisible character makes one text read as another (a
  reordered address, a look-alike name) and a line break splits a label; nothing typed
  into one line needs them. The price: spellings that need ZWNJ/ZWJ (some Persian and
  Indic words) and ZWJ emoji sequences cannot be entered.
* Identifiers (ids, request ids, skus): ASCII letters and digits first, then letters,
  digits and ``. _ : -`` (skus: ``. _ -``), bounded; never normalized, compared as sent.

Emails have their own format (services/user/domain.py) but refuse what free text refuses;
passwords are not text anyone reads and accept any character (only their length is bounded).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from services.common.errors import InvalidArgument


def _identifier(punctuation: str, max_chars: int) -> re.Pattern[str]:
    """The identifier policy for one kind of id; matched with fullmatch ("$" would let a
    trailing newline through)."""
    return re.compile(rf"[A-Za-z0-9][A-Za-z0-9{re.escape(punctuation)}]{{0,{max_chars - 1}}}")


# Ids: the services' own (``ord_`` + 32 hex digits) and the ones callers choose (saga keys
# such as ``<order id>.reserve``, request ids) share one format.
ID_MAX = 128
ID = _identifier("._:-", ID_MAX)
ID_RULE = f"required; letters, digits and . _ : - (at most {ID_MAX})"
REQUEST_ID_RULE = f"letters, digits and . _ : - (at most {ID_MAX})"

SKU_MAX = 64
SKU = _identifier("._-", SKU_MAX)
SKU_RULE = f"required; letters, digits and . _ - (at most {SKU_MAX})"

# Our tokens are base64 of "<time>|<id>", about 220 characters at most.
PAGE_TOKEN_MAX = 512

EMAIL_MAX = 254  # RFC 5321 path limit
EMAIL_LOCAL_PART_MAX = 64
PASSWORD_MIN = 8
# Bounded so a request cannot make the KDF chew on megabytes; far above any passphrase.
PASSWORD_MAX = 1024
DISPLAY_NAME_MAX = 100
# Longest accepted text per address field: enough for real labels, bounded for storage.
ADDRESS_LIMITS = {"recipient": 100, "line1": 200, "city": 100, "postal_code": 20}
COUNTRY_CODE = re.compile(r"[A-Z]{2}")
CURRENCY_CODE = re.compile(r"[A-Z]{3}")
UPDATE_MASK_PATHS_MAX = 10
FIELD_PATH_MAX = 64

UNPRINTABLE_RULE = "must be one line of printable text (no control, format, bidi or zero-width characters)"
_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REFUSED_CATEGORIES = frozenset({"Zl", "Zp"})
# Trimming removes spaces (category Zs) and ASCII whitespace (a form's trailing newline);
# any other control or format character is refused wherever it stands, ends included.
_SPACES = " \t\n\r\x0b\x0c" + "".join(chr(c) for c in range(0x3001) if unicodedata.category(chr(c)) == "Zs")


# -- free text ---------------------------------------------------------------------------


def unprintable(text: str) -> bool:
    """Whether ``text`` holds a character the free-text policy refuses (see the module doc)."""
    if text.isascii():
        return _ASCII_CONTROL.search(text) is not None
    for char in text:
        category = unicodedata.category(char)
        if category[0] == "C" or category in _REFUSED_CATEGORIES:
            return True
    return False


def free_text(value: str) -> str:
    """The stored form of free text: spaces and ASCII whitespace trimmed, in NFC."""
    value = value.strip(_SPACES)
    return value if value.isascii() else unicodedata.normalize("NFC", value)


def free_text_violation(value: str, limit: int, *, required: bool = True) -> str | None:
    """Why ``value`` is not free text of at most ``limit`` characters once stored, or None."""
    value = free_text(value)
    if not value:
        return "required" if required else None
    if len(value) > limit:
        return f"at most {limit} characters"
    if unprintable(value):
        return UNPRINTABLE_RULE
    return None


def clean_free_text(
    field: str, value: str, limit: int, violations: dict[str, str], *, required: bool = True
) -> str:
    """The stored form of ``value``; adds a violation for ``field`` when the policy refuses it."""
    problem = free_text_violation(value, limit, required=required)
    if problem:
        violations[field] = problem
    return free_text(value)


# -- identifiers -------------------------------------------------------------------------


def id_violation(value: str) -> str | None:
    """Why ``value`` is not an id (required), or None."""
    return None if ID.fullmatch(value) else ID_RULE


def request_id_violation(value: str, *, required: bool = False) -> str | None:
    """Why ``value`` is not a request id (an idempotency key), or None; empty may be allowed."""
    if not value:
        return "required (the idempotency key of this call)" if required else None
    return None if ID.fullmatch(value) else REQUEST_ID_RULE


def sku_violation(value: str) -> str | None:
    return None if SKU.fullmatch(value) else SKU_RULE


def page_token_violation(value: str) -> str | None:
    return None if len(value) <= PAGE_TOKEN_MAX else "is not a token returned by this service"


def require_id(field: str, value: str) -> None:
    """INVALID_ARGUMENT naming ``field`` unless ``value`` is an id."""
    problem = id_violation(value)
    if problem:
        raise InvalidArgument({field: problem})


def require_ids(fields: Sequence[tuple[str, str]], violations: dict[str, str]) -> None:
    """Add a violation for each (field, value) that is not an id."""
    for field, value in fields:
        problem = id_violation(value)
        if problem:
            violations[field] = problem


def require_id_and_key(field: str, value: str, request_id: str = "") -> None:
    """INVALID_ARGUMENT naming every bad field: ``field`` must be an id, ``request_id`` (optional) a key."""
    violations: dict[str, str] = {}
    require_ids(((field, value),), violations)
    problem = request_id_violation(request_id)
    if problem:
        violations["request_id"] = problem
    if violations:
        raise InvalidArgument(violations)


def require_request_id(value: str, field: str = "request_id", *, required: bool = False) -> None:
    problem = request_id_violation(value, required=required)
    if problem:
        raise InvalidArgument({field: problem})
