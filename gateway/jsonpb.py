"""Strict proto3 JSON -> message, the way Go's protojson reads it.

``json_format.ParseDict`` leans on Python's ``int()``/``float()``, which accept ``"+1"``,
``"1_000"``, ``"\\t1"`` and non-ASCII digits; a gateway that publishes a schema must
reject exactly what the schema rejects. This reader checks every value against its field
(integers as JSON numbers or ``-?[0-9]+`` strings, in range; floats as numbers or numeric
strings, NaN/Infinity only as strings; enums by name or int32; bytes as base64), refuses
unknown fields, a field given under both of its names, two members of one oneof, and null
inside repeated fields. Errors name the field path (``items[0].quantity``) for the
BadRequest violation. Well-known types (``google.protobuf.*``) have special JSON forms and
are handed to json_format.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import math
import re
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

# Shared with gateway.fields (path and query values follow the same number rules).
INT_TEXT = re.compile(r"-?[0-9]{1,20}")
FLOAT_TEXT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_BASE64 = re.compile(r"[A-Za-z0-9+/\-_]*={0,2}")
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
FLOAT32_MAX = 3.4028234663852886e38
WKT_PREFIX = "google.protobuf."


class JsonError(ValueError):
    """A JSON value that does not fit the message; ``path`` is the field path."""

    def __init__(self, path: str, description: str) -> None:
        super().__init__(f"{path or 'body'}: {description}")
        self.path = path
        self.description = description


_FIELDS: dict[str, dict[str, FieldDescriptor]] = {}


def _fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    names = _FIELDS.get(descriptor.full_name)
    if names is None:
        names = {}
        for field in descriptor.fields:
            names[field.json_name] = field
            names[field.name] = field
        _FIELDS[descriptor.full_name] = names
    return names


def merge(value: Any, message: Message, max_depth: int = 64) -> None:
    """Merge the decoded JSON object ``value`` into ``message``; JsonError when it does not fit."""
    _message(value, message, "", max_depth)


def _message(value: Any, message: Message, path: str, depth: int) -> None:
    descriptor: Any = message.DESCRIPTOR
    if descriptor.full_name.startswith(WKT_PREFIX):
        _well_known(value, message, path)
        return
    if not isinstance(value, dict):
        raise JsonError(path, f"expected an object for {descriptor.name}")
    if depth <= 0:
        raise JsonError(path, "nested too deeply")
    names = _fields(descriptor)
    seen: set[str] = set()
    oneofs: dict[str, str] = {}
    for key, item in value.items():
        field = names.get(key)
        where = f"{path}.{key}" if path else key
        if field is None:
            raise JsonError(where, "unknown field")
        if field.name in seen:
            raise JsonError(where, "field given twice (under both of its names)")
        seen.add(field.name)
        if item is None:
            if field.message_type is not None and field.message_type.full_name == "google.protobuf.Value":
                getattr(message, field.name).null_value = 0
            continue
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in oneofs:
                raise JsonError(where, f"oneof {oneof.name} already has {oneofs[oneof.name]}")
            oneofs[oneof.name] = field.name
        _field(item, message, field, where, depth)


def _field(value: Any, message: Message, field: FieldDescriptor, path: str, depth: int) -> None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        _map(value, message, field, path, depth)
    elif field.is_repeated:
        if not isinstance(value, list):
            raise JsonError(path, "expected an array")
        container = getattr(message, field.name)
        for index, item in enumerate(value):
            where = f"{path}[{index}]"
            if item is None:
                raise JsonError(where, "null is not allowed in a repeated field")
            if field.message_type is not None:
                _message(item, container.add(), where, depth - 1)
            else:
                container.append(scalar(item, field, where))
    elif field.message_type is not None:
        sub = getattr(message, field.name)
        _message(value, sub, path, depth - 1)
        sub.SetInParent()
    else:
        setattr(message, field.name, scalar(value, field, path))


def _map(value: Any, message: Message, field: FieldDescriptor, path: str, depth: int) -> None:
    if not isinstance(value, dict):
        raise JsonError(path, "expected an object (a map)")
    entry = field.message_type
    assert entry is not None
    key_field = entry.fields_by_name["key"]
    value_field = entry.fields_by_name["value"]
    container = getattr(message, field.name)
    for raw_key, item in value.items():
        where = f"{path}[{raw_key!r}]"
        if key_field.type == FieldDescriptor.TYPE_BOOL:
            if raw_key not in ("true", "false"):
                raise JsonError(where, "map key must be true or false")
            key: Any = raw_key == "true"
        elif key_field.type == FieldDescriptor.TYPE_STRING:
            key = text(raw_key, where)
        else:
            key = scalar(raw_key, key_field, where)
        if item is None:
            raise JsonError(where, "null is not allowed as a map value")
        if value_field.message_type is not None:
            _message(item, container[key], where, depth - 1)
        else:
            container[key] = scalar(item, value_field, where)


def text(value: str, path: str) -> str:
    """``value`` when it is Unicode text; JsonError for a lone surrogate.

    JSON lets ``"\\ud800"`` through as an escape, Python decodes it to a lone surrogate, and
    protobuf (which stores UTF-8) then raises UnicodeEncodeError on assignment: the client's
    bad input, so it must be a 400 here rather than an unexpected error later. ASCII, the
    common case, is checked in one pass without encoding.
    """
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise JsonError(path, "is not Unicode text (it holds a lone surrogate escape)") from None
    return value


def scalar(value: Any, field: FieldDescriptor, path: str) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise JsonError(path, "expected a string")
        return text(value, path)
    if kind in INT_RANGES:
        return _integer(value, kind, path)
    if kind == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise JsonError(path, "expected true or false")
        return value
    if kind == FieldDescriptor.TYPE_ENUM:
        return _enum(value, field, path)
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return _float(value, kind == FieldDescriptor.TYPE_FLOAT, path)
    if kind == FieldDescriptor.TYPE_BYTES:
        if not isinstance(value, str) or not _BASE64.fullmatch(value):
            raise JsonError(path, "expected a base64 string")
        padded = value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4)
        try:
            if "-" in value or "_" in value:
                return base64.urlsafe_b64decode(padded)
            return base64.b64decode(padded, validate=True)
        except (binascii.Error, ValueError):
            raise JsonError(path, "expected a base64 string") from None
    raise JsonError(path, "unsupported field type")


def _integer(value: Any, kind: int, path: str) -> int:
    if isinstance(value, bool):
        raise JsonError(path, "expected an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise JsonError(path, "expected an integer")
        number = int(value)
    elif isinstance(value, str) and INT_TEXT.fullmatch(value):
        number = int(value)
    else:
        raise JsonError(path, "expected an integer (a number or a decimal string)")
    low, high = INT_RANGES[kind]
    if not low <= number <= high:
        raise JsonError(path, "integer out of range")
    return number


def _float(value: Any, single: bool, path: str) -> float:
    if isinstance(value, bool):
        raise JsonError(path, "expected a number")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and value in ("NaN", "Infinity", "-Infinity"):
        return float(value)
    elif isinstance(value, str) and FLOAT_TEXT.fullmatch(value):
        number = float(value)
    else:
        raise JsonError(path, "expected a number")
    if math.isinf(number) or (single and abs(number) > FLOAT32_MAX):
        raise JsonError(path, "number out of range")
    return number


def _enum(value: Any, field: FieldDescriptor, path: str) -> int:
    enum = field.enum_type
    assert enum is not None
    if isinstance(value, str):
        # Enum names are ASCII identifiers; upb's lookup raises SystemError on a lone surrogate.
        known = enum.values_by_name.get(value) if value.isascii() else None
        if known is None:
            raise JsonError(path, f"unknown {enum.name} value")
        return int(known.number)
    if isinstance(value, int) and not isinstance(value, bool):
        if not -(2**31) <= value < 2**31 or (enum.is_closed and value not in enum.values_by_number):
            raise JsonError(path, f"unknown {enum.name} value")
        return value
    raise JsonError(path, f"expected a {enum.name} name or number")


def _well_known(value: Any, message: Message, path: str) -> None:
    try:
        json_format.ParseDict(value, message, ignore_unknown_fields=False)
    except (json_format.ParseError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as error:
        text = str(error).split("\n", 1)[0]
        raise JsonError(path, f"invalid {message.DESCRIPTOR.name}: {text}") from None


# -- message -> proto3 JSON value ----------------------------------------------------------
#
# The same output as ``json_format.MessageToDict(m, always_print_fields_with_no_presence=True)``
# (the tests hold it to that), from a per-type plan computed once: json_format re-inspects
# every field descriptor on every call, which showed up in the gateway's profile.

_SCALAR, _INT64, _ENUM, _BYTES, _FLOAT, _DOUBLE, _MESSAGE, _MAP = range(8)
_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED64,
    }
)
_Plan = list[tuple[str, str, int, bool, bool, Any]]
_PLANS: dict[str, _Plan] = {}


def _kind(field: FieldDescriptor) -> int:
    if field.message_type is not None:
        return _MAP if field.message_type.GetOptions().map_entry else _MESSAGE
    if field.type in _INT64_TYPES:
        return _INT64
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _ENUM
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _BYTES
    if field.type == FieldDescriptor.TYPE_FLOAT:
        return _FLOAT
    if field.type == FieldDescriptor.TYPE_DOUBLE:
        return _DOUBLE
    return _SCALAR


def _plan(descriptor: Any) -> _Plan:
    plan = _PLANS.get(descriptor.full_name)
    if plan is None:
        plan = []
        for field in descriptor.fields:
            kind = _kind(field)
            extra: Any = None
            if kind == _ENUM:
                extra = {v.number: v.name for v in field.enum_type.values}
            elif kind == _MAP:
                extra = field.message_type.fields_by_name["value"]
            presence = field.has_presence and not field.is_repeated
            plan.append((field.name, field.json_name, kind, field.is_repeated, presence, extra))
        _PLANS[descriptor.full_name] = plan
    return plan


def to_json_value(message: Message) -> Any:
    """proto3 JSON of ``message`` as Python values, every no-presence field included."""
    descriptor: Any = message.DESCRIPTOR
    if descriptor.full_name.startswith(WKT_PREFIX):
        if descriptor.full_name == "google.protobuf.Timestamp":
            return _timestamp(message)
        return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    out: dict[str, Any] = {}
    for name, json_name, kind, repeated, presence, extra in _plan(descriptor):
        if presence and not message.HasField(name):
            continue
        value = getattr(message, name)
        if kind == _SCALAR:
            out[json_name] = list(value) if repeated else value
        elif kind == _MESSAGE:
            out[json_name] = [to_json_value(v) for v in value] if repeated else to_json_value(value)
        elif kind == _INT64:
            out[json_name] = [str(v) for v in value] if repeated else str(value)
        elif kind == _ENUM:
            out[json_name] = [extra.get(v, v) for v in value] if repeated else extra.get(value, value)
        elif kind == _MAP:
            out[json_name] = {_map_key(k): _single(v, extra) for k, v in value.items()}
        else:
            out[json_name] = (
                [_single(v, _field_of(descriptor, name)) for v in value]
                if repeated
                else _single(value, _field_of(descriptor, name))
            )
    return out


def _field_of(descriptor: Any, name: str) -> FieldDescriptor:
    field: FieldDescriptor = descriptor.fields_by_name[name]
    return field


def _map_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _single(value: Any, field: FieldDescriptor) -> Any:
    """One value of a field whose JSON form needs work (bytes, floats, map values)."""
    kind = _kind(field)
    if kind == _MESSAGE:
        return to_json_value(value)
    if kind == _INT64:
        return str(value)
    if kind == _ENUM:
        enum = field.enum_type
        assert enum is not None
        known = enum.values_by_number.get(value)
        return known.name if known is not None else value
    if kind == _BYTES:
        return base64.b64encode(value).decode()
    if kind in (_FLOAT, _DOUBLE):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if kind == _FLOAT:
            from google.protobuf.internal import type_checkers

            return type_checkers.ToShortestFloat(value)
        return value
    return value


_EPOCH = datetime.datetime(1970, 1, 1)
_MIN_SECONDS, _MAX_SECONDS = -62135596800, 253402300799  # 0001-01-01 .. 9999-12-31


def _timestamp(message: Any) -> Any:
    """RFC 3339 text of a Timestamp, exactly as json_format writes it (3, 6 or 9 digits)."""
    seconds, nanos = message.seconds, message.nanos
    if not (_MIN_SECONDS <= seconds <= _MAX_SECONDS and 0 <= nanos < 1_000_000_000):
        return json_format.MessageToDict(message)  # out of range: json_format says why
    text = (_EPOCH + datetime.timedelta(seconds=seconds)).isoformat()
    if nanos == 0:
        return text + "Z"
    if nanos % 1_000_000 == 0:
        return f"{text}.{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f"{text}.{nanos // 1_000:06d}Z"
    return f"{text}.{nanos:09d}Z"
