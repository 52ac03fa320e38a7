"""Path and query values into request fields: each proto3 JSON text rule, and errors naming the field."""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.protobuf import message_factory, struct_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from gateway.fields import FieldValueError, assign, field_named, resolve, scalar, settable_from_text
from tests.unit.gateway.library import library_file

FILE = library_file()
BOOK: Descriptor = FILE.message_types_by_name["Book"]
LISTING: Descriptor = FILE.message_types_by_name["ListBooksRequest"]


def new(descriptor: Descriptor) -> Any:
    return message_factory.GetMessageClass(descriptor)()


def set_query(message: Message, key: str, *values: str) -> None:
    assign(message, resolve(message.DESCRIPTOR, key), values, key)


@pytest.mark.parametrize(
    ("field", "text", "value"),
    [
        ("title", "x/y é", "x/y é"),
        ("pages", "-9223372036854775808", -(2**63)),
        ("available", "true", True),
        ("available", "false", False),
        ("kind", "KIND_ESSAY", 2),
        ("kind", "7", 7),  # unknown numbers are kept, as proto3 JSON does
        ("rating", "2.5e1", 25.0),
        ("cover", "aGk", b"hi"),  # padding optional
        ("cover", "-_8", b"\xfb\xff"),  # URL-safe alphabet
        ("cover", "+/8=", b"\xfb\xff"),
    ],
)
def test_scalars_from_text(field: str, text: str, value: object) -> None:
    assert scalar(BOOK.fields_by_name[field], text, field) == value


def test_nan_and_infinities_are_their_json_names() -> None:
    rating = BOOK.fields_by_name["rating"]
    assert math.isnan(scalar(rating, "NaN", "rating"))
    assert scalar(rating, "-Infinity", "rating") == -math.inf


@pytest.mark.parametrize(
    ("field", "text", "description"),
    [
        ("pages", "12.0", "'12.0' is not an integer"),
        ("pages", "9223372036854775808", "9223372036854775808 is out of range"),
        ("available", "yes", "must be true or false"),
        ("available", "True", "must be true or false"),
        ("kind", "KIND_POEM", "'KIND_POEM' is not a Kind value"),
        ("kind", "2147483648", "'2147483648' is not a Kind value"),
        ("rating", "1e400", "number out of range"),
        ("rating", "one", "'one' is not a number"),
        ("cover", "a*b", "is not base64"),
        ("author", "x", "cannot be set from text"),
    ],
)
def test_bad_text_names_the_field(field: str, text: str, description: str) -> None:
    with pytest.raises(FieldValueError) as caught:
        scalar(BOOK.fields_by_name[field], text, f"book.{field}")
    assert (caught.value.field, caught.value.description) == (f"book.{field}", description)
    assert str(caught.value) == f"book.{field}: {description}"


def test_query_keys_resolve_by_either_naming_style_through_messages() -> None:
    request = new(LISTING)
    set_query(request, "pageSize", "20")
    set_query(request, "min_rating", "4.5")
    set_query(request, "kinds", "KIND_NOVEL", "2")
    set_query(request, "author.born", "2001-02-03T04:05:06Z")
    set_query(request, "author.name", "Ōe")
    assert (request.page_size, request.min_rating, list(request.kinds)) == (20, 4.5, [1, 2])
    assert (request.author.name, request.author.born.seconds) == ("Ōe", 981173106)
    assert field_named(LISTING, "minRating") is field_named(LISTING, "min_rating") is not None
    assert field_named(LISTING, "nope") is None


@pytest.mark.parametrize(
    ("key", "description"),
    [
        ("nope", "unknown query parameter"),
        ("author", "a message field cannot be set from a query parameter"),
        ("author.born.seconds", "does not name a field"),  # a Timestamp is set whole, from its text
        ("tags.x", "does not name a field"),
    ],
)
def test_unusable_query_keys(key: str, description: str) -> None:
    with pytest.raises(FieldValueError) as caught:
        resolve(LISTING, key)
    assert (caught.value.field, caught.value.description) == (key, description)


def test_a_singular_field_takes_one_value() -> None:
    with pytest.raises(FieldValueError, match=r"^pageSize: is not repeated but was given several values$"):
        set_query(new(LISTING), "pageSize", "1", "2")


def test_a_bad_timestamp_is_a_field_error() -> None:
    with pytest.raises(FieldValueError) as caught:
        set_query(new(LISTING), "author.born", "yesterday")
    assert caught.value.field == "author.born"


def test_only_one_member_of_a_oneof() -> None:
    value = struct_pb2.Value()
    set_query(value, "string_value", "a")
    set_query(value, "string_value", "b")  # the same member again is fine
    assert value.string_value == "b"
    with pytest.raises(
        FieldValueError, match=r"another member of oneof kind \(string_value\) is already set"
    ):
        set_query(value, "bool_value", "true")


def test_settable_from_text() -> None:
    assert settable_from_text(BOOK.fields_by_name["pages"])
    assert settable_from_text(FILE.message_types_by_name["Author"].fields_by_name["born"])
    assert not settable_from_text(BOOK.fields_by_name["author"])
    assert not settable_from_text(struct_pb2.Struct.DESCRIPTOR.fields_by_name["fields"])  # a map
