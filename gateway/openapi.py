"""OpenAPI 3.1 generated from the same descriptors and rules the router serves.

Every message is a component schema (proto3 JSON: lowerCamel names, int64 as decimal
strings, enums by name or number, well-known types in their JSON forms, fields nullable
since null means "default"), with ``additionalProperties: false`` because unknown fields are
refused. Each binding is one operation: path parameters from the template, query parameters
for the fields bound by neither path nor body (nested ones dotted), the request body from
``body``, the response from ``response_body``, the google.rpc.Status error schema as the
default response, and bearer security unless the RPC is public. Server streams declare
NDJSON and SSE.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.fields import STRING_FORM_TYPES, WRAPPER_TYPES
from gateway.jsonpb import WKT_PREFIX
from gateway.template import PathTemplate

if TYPE_CHECKING:
    from gateway.app import Route
    from gateway.settings import GatewaySettings

_INT32 = {"minimum": -(2**31), "maximum": 2**31 - 1}
_UINT32 = {"minimum": 0, "maximum": 2**32 - 1}
_INT_PATTERN = "^-?[0-9]+$"
_FLOAT_PATTERN = r"^(-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?|NaN|-?Infinity)$"
_INT_KINDS = {
    FieldDescriptor.TYPE_INT32: ("int32", _INT32),
    FieldDescriptor.TYPE_SINT32: ("int32", _INT32),
    FieldDescriptor.TYPE_SFIXED32: ("int32", _INT32),
    FieldDescriptor.TYPE_UINT32: ("uint32", _UINT32),
    FieldDescriptor.TYPE_FIXED32: ("uint32", _UINT32),
    FieldDescriptor.TYPE_INT64: ("int64", {"minimum": -(2**63), "maximum": 2**63 - 1}),
    FieldDescriptor.TYPE_SINT64: ("int64", {"minimum": -(2**63), "maximum": 2**63 - 1}),
    FieldDescriptor.TYPE_SFIXED64: ("int64", {"minimum": -(2**63), "maximum": 2**63 - 1}),
    FieldDescriptor.TYPE_UINT64: ("uint64", {"minimum": 0, "maximum": 2**64 - 1}),
    FieldDescriptor.TYPE_FIXED64: ("uint64", {"minimum": 0, "maximum": 2**64 - 1}),
}
STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "google.rpc.Status: every error, the gateway's own and the services'.",
    "properties": {
        "code": {"type": "integer", "description": "gRPC status code"},
        "message": {"type": "string"},
        "details": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"@type": {"type": "string"}},
                "required": ["@type"],
                "additionalProperties": True,
            },
        },
    },
    "required": ["code", "message"],
}
_MAX_QUERY_DEPTH = 3
_OPENAPI_METHODS = frozenset({"GET", "PUT", "POST", "DELETE", "OPTIONS", "HEAD", "PATCH", "TRACE"})


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema or "anyOf" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    kinds = schema.get("type")
    if isinstance(kinds, str):
        return {**schema, "type": [kinds, "null"]}
    if isinstance(kinds, list):
        return {**schema, "type": [*kinds, "null"]}
    return schema


class SchemaBuilder:
    def __init__(self) -> None:
        self.components: dict[str, Any] = {"google.rpc.Status": STATUS_SCHEMA}

    def message(self, descriptor: Descriptor) -> dict[str, Any]:
        """A $ref to the component of ``descriptor`` (built on first use)."""
        name = descriptor.full_name
        if name.startswith(WKT_PREFIX):
            return self._well_known(descriptor)
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursion refers to it by name
            self.components[name] = self.object_schema(descriptor, ())
        return _ref(name)

    def object_schema(self, descriptor: Descriptor, exclude: Sequence[str]) -> dict[str, Any]:
        properties = {
            field.json_name: self.field(field) for field in descriptor.fields if field.name not in exclude
        }
        return {
            "type": "object",
            "title": descriptor.name,
            "properties": properties,
            "additionalProperties": False,
            "description": f"{descriptor.full_name}; proto field names are accepted as well as lowerCamel ones.",
        }

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key = field.message_type.fields_by_name["key"]
            value = field.message_type.fields_by_name["value"]
            schema: dict[str, Any] = {"type": "object", "additionalProperties": self.single(value)}
            if key.type != FieldDescriptor.TYPE_STRING:
                schema["propertyNames"] = {"pattern": "^(true|false)$" if key.type == 8 else _INT_PATTERN}
            return _nullable(schema)
        if field.is_repeated:
            return _nullable({"type": "array", "items": self.single(field)})
        return _nullable(self.single(field))

    def single(self, field: FieldDescriptor) -> dict[str, Any]:
        """The schema of one value of ``field`` (an element, for a repeated field)."""
        kind = field.type
        if field.message_type is not None:
            return self.message(field.message_type)
        if kind in _INT_KINDS:
            fmt, bounds = _INT_KINDS[kind]
            return {"type": ["integer", "string"], "format": fmt, "pattern": _INT_PATTERN, **bounds}
        if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            fmt = "float" if kind == FieldDescriptor.TYPE_FLOAT else "double"
            return {"type": ["number", "string"], "format": fmt, "pattern": _FLOAT_PATTERN}
        if kind == FieldDescriptor.TYPE_BOOL:
            return {"type": "boolean"}
        if kind == FieldDescriptor.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64", "pattern": "^[A-Za-z0-9+/_-]*={0,2}$"}
        if kind == FieldDescriptor.TYPE_ENUM:
            return self.enum(field)
        return {"type": "string"}

    def enum(self, field: FieldDescriptor) -> dict[str, Any]:
        enum = field.enum_type
        assert enum is not None
        name = enum.full_name
        if name not in self.components:
            self.components[name] = {
                "anyOf": [
                    {"type": "string", "enum": [v.name for v in enum.values]},
                    {"type": "integer", **_INT32},
                ],
                "title": enum.name,
                "description": f"{name}, by name or by number.",
            }
        return _ref(name)

    def _well_known(self, descriptor: Descriptor) -> dict[str, Any]:
        name = descriptor.full_name
        if name == "google.protobuf.Timestamp":
            return {"type": "string", "format": "date-time", "description": "RFC 3339, UTC 'Z'"}
        if name == "google.protobuf.Duration":
            return {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$"}
        if name == "google.protobuf.FieldMask":
            return {"type": "string", "description": "comma-separated lowerCamel field paths"}
        if name in WRAPPER_TYPES:
            return self.single(descriptor.fields_by_name["value"])
        if name == "google.protobuf.Empty":
            return {"type": "object", "additionalProperties": False}
        if name == "google.protobuf.Struct":
            return {"type": "object"}
        if name == "google.protobuf.ListValue":
            return {"type": "array"}
        if name == "google.protobuf.Any":
            return {"type": "object", "properties": {"@type": {"type": "string"}}, "required": ["@type"]}
        return {}


def _query_parameters(
    builder: SchemaBuilder, descriptor: Descriptor, prefix: str, skip: set[str], depth: int
) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = []
    for field in descriptor.fields:
        proto_path = f"{prefix}{field.name}"
        if proto_path in skip:
            continue
        name = f"{prefix}{field.json_name}"
        message = field.message_type
        if message is not None and message.GetOptions().map_entry:
            continue
        if message is not None and message.full_name not in STRING_FORM_TYPES | WRAPPER_TYPES:
            if depth < _MAX_QUERY_DEPTH and not field.is_repeated:
                parameters += _query_parameters(builder, message, f"{name}.", skip, depth + 1)
            continue
        schema = builder.single(field)
        if "$ref" in schema:  # enums: inline so the parameter stays a plain value
            schema = builder.components[schema["$ref"].rsplit("/", 1)[1]]
        schema = _query_schema(schema)
        parameter: dict[str, Any] = {"name": name, "in": "query", "required": False}
        if field.is_repeated:
            parameter.update(schema={"type": "array", "items": schema}, style="form", explode=True)
        else:
            parameter["schema"] = schema
        if field.name == "page_size":
            parameter["description"] = "values above the gateway's cap are lowered to it"
        parameters.append(parameter)
    return parameters


def _query_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Query values are text: integers are plain integers there (no string alternative)."""
    if schema.get("type") == ["integer", "string"]:
        out = {k: v for k, v in schema.items() if k != "pattern"}
        out["type"] = "integer"
        return out
    return {k: v for k, v in schema.items() if k not in ("title", "description")}


def _operation(builder: SchemaBuilder, route: Route, names: Sequence[str]) -> dict[str, Any]:
    binding = route.binding
    method = binding.method
    path_fields = {v.name for v in binding.template.variables}
    parameters: list[dict[str, Any]] = []
    for variable, name in zip(binding.template.variables, names, strict=True):
        chain_field: Descriptor | None = method.input_type
        field: FieldDescriptor | None = None
        for part in variable.field_path:
            assert chain_field is not None
            field = chain_field.fields_by_name[part]
            chain_field = field.message_type
        assert field is not None
        schema = _query_schema(builder.single(field))
        if "$ref" in schema:
            schema = builder.components[schema["$ref"].rsplit("/", 1)[1]]
        if schema.get("type") == "string":
            schema = {**schema, "minLength": 1}
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": schema,
                "description": f"binds the request field {variable.name}",
            }
        )
    operation: dict[str, Any] = {
        "operationId": f"{method.containing_service.name}_{method.name}"
        + (f"_{binding.index}" if binding.index else ""),
        "tags": [method.containing_service.name],
        "summary": method.name,
        "x-grpc-method": binding.grpc_path,
    }
    body = binding.body
    if body == "*":
        exclude = [name for name in path_fields if "." not in name]
        schema = (
            builder.object_schema(method.input_type, exclude)
            if exclude
            else builder.message(method.input_type)
        )
        operation["requestBody"] = {"required": False, "content": {"application/json": {"schema": schema}}}
    elif body:
        field = method.input_type.fields_by_name[body]
        operation["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": builder.field(field)}},
        }
    if body != "*":
        skip = {".".join(v.field_path) for v in binding.template.variables}
        if body:
            skip.add(body)
        parameters += _query_parameters(builder, method.input_type, "", skip, 0)
    if parameters:
        operation["parameters"] = parameters
    response_field = binding.response_field
    output = (
        builder.single(response_field) if response_field is not None else builder.message(method.output_type)
    )
    if response_field is not None and response_field.is_repeated:
        output = {"type": "array", "items": output}
    if binding.server_streaming:
        line = {
            "type": "object",
            "properties": {"result": output, "error": _ref("google.rpc.Status")},
            "additionalProperties": False,
        }
        content: dict[str, Any] = {
            "application/x-ndjson": {"schema": line},
            "text/event-stream": {"schema": {"type": "string"}},
        }
        description = "a stream: one JSON object per line ({result} or a last {error}), or SSE events"
    else:
        content = {"application/json": {"schema": output}}
        description = "OK"
    operation["responses"] = {
        "200": {"description": description, "content": content},
        "default": {
            "description": "an error, as google.rpc.Status",
            "content": {"application/json": {"schema": _ref("google.rpc.Status")}},
        },
    }
    operation["security"] = [] if route.public else [{"bearerAuth": []}]
    return operation


def parameter_names(template: PathTemplate) -> list[str]:
    """Plain names for path variables (``user.user_id`` -> ``user_id``), unique per template."""
    last = [v.field_path[-1] for v in template.variables]
    return [
        name if last.count(name) == 1 else "_".join(v.field_path)
        for name, v in zip(last, template.variables, strict=True)
    ]


def openapi_path(template: PathTemplate, names: Sequence[str]) -> str:
    """The OpenAPI path of a template: each variable (``{name=shelves/*}`` too) becomes ``{name}``."""
    parts: list[str] = []
    index = 0
    while index < len(template.segments):
        variable = template.variable_for(index)
        if variable is None:
            segment = template.segments[index]
            parts.append({"literal": segment.value, "wild": "*", "deep": "**"}[segment.kind])
            index += 1
            continue
        parts.append("{" + names[template.variables.index(variable)] + "}")
        index = variable.end
    return "/" + "/".join(parts) + (f":{template.verb}" if template.verb else "")


def build_document(routes: Sequence[Route], settings: GatewaySettings) -> dict[str, Any]:
    builder = SchemaBuilder()
    paths: dict[str, dict[str, Any]] = {}
    # Templates of one shape are one OpenAPI path (the spec forbids the same hierarchy under
    # two parameter names): the first rule's names are used for every rule of that shape.
    names_by_shape: dict[str, list[str]] = {}
    for route in routes:
        template = route.binding.template
        if route.binding.http_method not in _OPENAPI_METHODS:
            continue  # a custom kind OpenAPI has no word for: served, not documented
        names = names_by_shape.setdefault(template.shape, parameter_names(template))
        if len(names) != len(template.variables):
            names = parameter_names(template)
        item = paths.setdefault(openapi_path(template, names), {})
        item[route.binding.http_method.lower()] = _operation(builder, route, names)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tsunagu shop API",
            "version": "v1",
            "description": "REST/JSON transcoded to gRPC from the services' google.api.http rules.",
        },
        "servers": [{"url": "/"}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(builder.components.items())),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def build_openapi(routes: Sequence[Route], settings: GatewaySettings) -> bytes:
    return json.dumps(build_document(routes, settings), indent=1).encode()
