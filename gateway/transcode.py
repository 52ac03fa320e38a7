"""proto3 JSON both ways, per binding: HTTP request -> request message, response -> JSON.

A request message is built in the order the http.proto spec gives: the body (``*`` fills
the message, a field name fills that field), then the path variables (they win over the
body), then the query parameters for fields bound by neither. JSON is parsed strictly:
unknown fields, bare NaN, wrong types, too deep nesting, text that is not Unicode are all
400 naming the field, never a crash. Anything else raised here is a gateway bug, not the
client's bad input: the gateway logs it and answers 500 (it is never relabelled as a 400).
Responses are rendered as canonical proto3 JSON (lowerCamel names, int64 as strings, enums
by name) with every field present, so clients see a stable shape.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from gateway import jsonpb
from gateway.errors import GatewayError, bad_request
from gateway.fields import FieldValueError, assign, resolve
from gateway.rules import Binding, resolve_field_path

MAX_QUERY_FIELDS = 100
PAGE_SIZE_FIELD = "page_size"
_INT_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
    }
)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (proto3 JSON writes it as a string)")


def load_json(body: bytes, max_depth: int) -> Any:
    """Decode a JSON body; 400 for invalid JSON or nesting deeper than ``max_depth``."""
    try:
        value = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise _too_deep(max_depth) from None
    except UnicodeDecodeError:  # a ValueError too; its text is Python's codec message
        raise bad_request("the body is not valid UTF-8", "body") from None
    except ValueError as error:  # JSONDecodeError: says where the JSON breaks
        raise bad_request(f"the body is not valid JSON: {error}", "body") from None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise _too_deep(max_depth)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return value


def _too_deep(max_depth: int) -> GatewayError:
    return bad_request(f"the JSON body nests deeper than {max_depth} levels", "body")


class RequestTranscoder:
    """Builds one binding's request message from path bindings, query string and body."""

    def __init__(self, binding: Binding, max_json_depth: int, max_page_size: int) -> None:
        self.binding = binding
        self.message_class: type[Message] = message_factory.GetMessageClass(binding.method.input_type)
        self.max_json_depth = max_json_depth
        self.max_page_size = max_page_size
        descriptor = binding.method.input_type
        self.path_chains = {
            v.name: resolve_field_path(descriptor, v.field_path) for v in binding.template.variables
        }
        # Top-level fields the query string may not set: bound by the path or the body.
        self.bound_top = {chain[0].name for chain in self.path_chains.values() if len(chain) == 1}
        self.body_field = binding.body_field
        if self.body_field is not None:
            self.bound_top.add(self.body_field.name)
        page = descriptor.fields_by_name.get(PAGE_SIZE_FIELD)
        self.page_size = (
            page if page is not None and page.type in _INT_TYPES and not page.is_repeated else None
        )

    def build(self, path_values: dict[str, str], query: str, body: bytes) -> Message:
        message = self.message_class()
        if self.binding.body and body.strip():
            self._body(message, body)
        try:
            for name, value in path_values.items():
                assign(message, self.path_chains[name], (value,), name)
            if query:
                self._query(message, query)
        except FieldValueError as error:
            raise bad_request(f"invalid request: {error}", error.field, error.description) from None
        if self.page_size is not None:
            size = getattr(message, PAGE_SIZE_FIELD)
            if size > self.max_page_size:
                setattr(message, PAGE_SIZE_FIELD, self.max_page_size)  # AIP-158: coerce to the maximum
        return message

    def _body(self, message: Message, body: bytes) -> None:
        value = load_json(body, self.max_json_depth)
        if self.body_field is None:
            if not isinstance(value, dict):
                raise bad_request("the body must be a JSON object", "body")
        else:
            value = {self.body_field.name: value}
        try:
            jsonpb.merge(value, message, self.max_json_depth)
        except jsonpb.JsonError as error:
            raise bad_request(
                f"invalid request body: {error}", error.path or "body", error.description
            ) from None

    def _query(self, message: Message, query: str) -> None:
        if self.binding.body == "*":
            raise FieldValueError("query", "this method takes every field from the body, not the query")
        try:
            pairs = parse_qsl(query, keep_blank_values=True, errors="strict", max_num_fields=MAX_QUERY_FIELDS)
        except UnicodeDecodeError:  # not Python's codec message: the client needs the rule
            raise FieldValueError("query", "the query string is not valid percent-encoded UTF-8") from None
        except ValueError as error:
            raise FieldValueError("query", f"malformed query string: {error}") from None
        grouped: dict[str, list[str]] = {}
        for key, value in pairs:
            grouped.setdefault(key, []).append(value)
        descriptor = self.binding.method.input_type
        path_names = set(self.path_chains)
        for key, values in grouped.items():
            chain = resolve(descriptor, key)
            dotted = ".".join(f.name for f in chain)
            if chain[0].name in self.bound_top or dotted in path_names:
                raise FieldValueError(key, "is bound by the path or the body, not the query")
            assign(message, chain, values, key)


class ResponseRenderer:
    """Renders one binding's response message (or its ``response_body`` field) as JSON."""

    def __init__(self, binding: Binding) -> None:
        self.field = binding.response_field
        self.whole_message_field = (
            self.field is not None and self.field.message_type is not None and not self.field.is_repeated
        )

    def to_json_value(self, message: Message) -> Any:
        if self.field is None:
            return jsonpb.to_json_value(message)
        if self.whole_message_field:
            return jsonpb.to_json_value(getattr(message, self.field.name))
        return jsonpb.to_json_value(message).get(self.field.json_name)

    def render(self, message: Message) -> bytes:
        return json.dumps(self.to_json_value(message), ensure_ascii=False, separators=(",", ":")).encode()
