"""Setting request fields from text: path variables and query parameters.

A path or query value is text; the field says what it must become. Integers follow the
proto3 JSON rules (decimal, in range), enums are accepted by name or number, bools as
``true``/``false``, bytes as base64 (standard or URL-safe, padding optional), and the
well-known types that have a string form in proto3 JSON (Timestamp, Duration, FieldMask and
the wrappers) from that form. Anything else is a :class:`FieldValueError` naming the field,
which the gateway answers with 400 and a BadRequest violation.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway.jsonpb import FLOAT32_MAX, FLOAT_TEXT, INT_RANGES, INT_TEXT

# Well-known types whose proto3 JSON form is a string, so a path or query value can carry them.
STRING_FORM_TYPES = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
WRAPPER_TYPES = frozenset(
    f"google.protobuf.{name}Value"
    for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
)


class FieldValueError(ValueError):
    """A value that does not fit its field; ``field`` is the dotted name the client used."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def scalar(field: FieldDescriptor, text: str, name: str) -> Any:
    """The Python value of ``text`` for a scalar (non-message) field."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return text
    if kind in INT_RANGES:
        low, high = INT_RANGES[kind]
        if not INT_TEXT.fullmatch(text):
            raise FieldValueError(name, f"{text[:40]!r} is not an integer")
        integer = int(text)
        if not low <= integer <= high:
            raise FieldValueError(name, f"{integer} is out of range")
        return integer
    if kind == FieldDescriptor.TYPE_BOOL:
        if text in ("true", "false"):
            return text == "true"
        raise FieldValueError(name, "must be true or false")
    if kind == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        value = enum.values_by_name.get(text)
        if value is not None:
            return value.number
        if INT_TEXT.fullmatch(text) and -(2**31) <= int(text) < 2**31:
            return int(text)
        raise FieldValueError(name, f"{text[:40]!r} is not a {enum.name} value")
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        if text in ("NaN", "Infinity", "-Infinity"):
            return float(text)
        if not FLOAT_TEXT.fullmatch(text):
            raise FieldValueError(name, f"{text[:40]!r} is not a number")
        number = float(text)
        if math.isinf(number) or (kind == FieldDescriptor.TYPE_FLOAT and abs(number) > FLOAT32_MAX):
            raise FieldValueError(name, "number out of range")
        return number
    if kind == FieldDescriptor.TYPE_BYTES:
        padded = text + "=" * (-len(text) % 4)
        try:
            if "-" in text or "_" in text:
                return base64.urlsafe_b64decode(padded.encode())
            return base64.b64decode(padded.encode(), validate=True)
        except (binascii.Error, ValueError):
            raise FieldValueError(name, "is not base64") from None
    raise FieldValueError(name, "cannot be set from text")


def _message_from_text(field: FieldDescriptor, text: str, name: str, target: Message) -> None:
    message_type = field.message_type
    assert message_type is not None
    full_name = message_type.full_name
    if full_name in STRING_FORM_TYPES:
        try:
            json_format.ParseDict(text, target)  # type: ignore[arg-type]  # WKTs take their JSON string
        except (json_format.ParseError, ValueError, TypeError) as error:
            raise FieldValueError(name, str(error)) from None
    elif full_name in WRAPPER_TYPES:
        target.value = scalar(message_type.fields_by_name["value"], text, name)  # type: ignore[attr-defined]
    else:
        raise FieldValueError(name, "a message field cannot be set from a path or query value")


def settable_from_text(field: FieldDescriptor) -> bool:
    """True when a path or query value can fill ``field`` (scalars and string-form WKTs)."""
    if field.message_type is None:
        return True
    if field.message_type.GetOptions().map_entry:
        return False
    return field.message_type.full_name in STRING_FORM_TYPES | WRAPPER_TYPES


_NAMES: dict[str, dict[str, FieldDescriptor]] = {}


def field_named(message: Descriptor, name: str) -> FieldDescriptor | None:
    """The field called ``name`` by its proto name or its lowerCamel JSON name."""
    names = _NAMES.get(message.full_name)
    if names is None:
        names = {}
        for field in message.fields:
            names[field.name] = field
            names[field.json_name] = field
        _NAMES[message.full_name] = names
    return names.get(name)


def resolve(message: Descriptor, dotted: str) -> list[FieldDescriptor]:
    """The field chain of a dotted query key (either naming style per step)."""
    chain: list[FieldDescriptor] = []
    current: Descriptor | None = message
    for part in dotted.split("."):
        if current is None or (chain and chain[-1].is_repeated):
            raise FieldValueError(dotted, "does not name a field")
        field = field_named(current, part)
        if field is None:
            raise FieldValueError(dotted, "unknown query parameter")
        chain.append(field)
        current = field.message_type
        if current is not None and current.full_name in STRING_FORM_TYPES | WRAPPER_TYPES:
            current = None
    if not settable_from_text(chain[-1]):
        raise FieldValueError(dotted, "a message field cannot be set from a query parameter")
    return chain


def assign(message: Message, chain: Sequence[FieldDescriptor], values: Sequence[str], name: str) -> None:
    """Set the field at ``chain`` from ``values`` (several only for a repeated field)."""
    target: Any = message
    for step in chain[:-1]:
        target = getattr(target, step.name)
    leaf = chain[-1]
    if leaf.is_repeated:
        container = getattr(target, leaf.name)
        for text in values:
            if leaf.message_type is not None:
                _message_from_text(leaf, text, name, container.add())
            else:
                container.append(scalar(leaf, text, name))
        return
    if len(values) != 1:
        raise FieldValueError(name, "is not repeated but was given several values")
    oneof = leaf.containing_oneof
    if oneof is not None:
        chosen = target.WhichOneof(oneof.name)
        if chosen is not None and chosen != leaf.name:
            raise FieldValueError(name, f"another member of oneof {oneof.name} ({chosen}) is already set")
    if leaf.message_type is not None:
        sub = getattr(target, leaf.name)
        sub.Clear()
        _message_from_text(leaf, values[0], name, sub)
        if not sub.ListFields() and hasattr(target, "SetInParent"):
            sub.SetInParent()
    else:
        setattr(target, leaf.name, scalar(leaf, values[0], name))
