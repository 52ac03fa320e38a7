"""The OpenAPI document: paths from templates, parameters, bodies, schemas and security per route."""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, cast

from gateway.app import Route, build_routes
from gateway.openapi import build_document, build_openapi, openapi_path, parameter_names
from gateway.rules import bindings_of_files
from gateway.settings import GatewaySettings
from gateway.template import parse_template
from gateway.upstream import StaticChannelFactory
from tests.unit.gateway.library import library_file

SETTINGS = GatewaySettings()
SHOP = build_document(build_routes(SETTINGS, StaticChannelFactory({})), SETTINGS)


def library_document(public: Sequence[str] = ()) -> dict[str, Any]:
    routes = [
        SimpleNamespace(binding=b, public=b.rpc.rsplit(".", 1)[1] in public)
        for b in bindings_of_files([library_file()])
    ]
    return build_document(cast(Sequence[Route], routes), SETTINGS)


def test_template_variables_become_plain_path_parameters() -> None:
    template = parse_template("/v1/{name=shelves/*/books/*}")
    assert openapi_path(template, parameter_names(template)) == "/v1/{name}"
    nested = parse_template("/v1/books/{book.id}:archive")
    assert parameter_names(nested) == ["id"]
    assert openapi_path(nested, ["id"]) == "/v1/books/{id}:archive"
    clash = parse_template("/v1/{a.id}/x/{b.id}")
    assert parameter_names(clash) == ["a_id", "b_id"]  # unique per template
    assert openapi_path(parse_template("/v1/files/**"), []) == "/v1/files/**"


def test_shop_document_lists_every_route_with_unique_operation_ids() -> None:
    assert SHOP["openapi"] == "3.1.0"
    operations = [op for item in SHOP["paths"].values() for op in item.values()]
    ids = [op["operationId"] for op in operations]
    assert len(ids) == len(set(ids)) and "OrderService_GetOrder" in ids
    assert list(SHOP["paths"]) == sorted(SHOP["paths"])
    assert json.loads(build_openapi(build_routes(SETTINGS, StaticChannelFactory({})), SETTINGS)) == SHOP


def test_security_is_bearer_except_for_public_methods() -> None:
    paths = SHOP["paths"]
    assert paths["/v1/orders/{order_id}"]["get"]["security"] == [{"bearerAuth": []}]
    assert paths["/v1/users:login"]["post"]["security"] == []
    assert SHOP["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_path_parameters_are_required_non_empty_strings() -> None:
    [parameter] = SHOP["paths"]["/v1/orders/{order_id}"]["get"]["parameters"]
    assert (parameter["name"], parameter["in"], parameter["required"]) == ("order_id", "path", True)
    assert parameter["schema"]["type"] == "string" and parameter["schema"]["minLength"] == 1


def test_a_server_stream_declares_ndjson_and_sse() -> None:
    content = SHOP["paths"]["/v1/orders/{order_id}:watch"]["get"]["responses"]["200"]["content"]
    assert set(content) == {"application/x-ndjson", "text/event-stream"}
    line = content["application/x-ndjson"]["schema"]
    assert line["properties"]["error"] == {"$ref": "#/components/schemas/google.rpc.Status"}


def test_errors_are_google_rpc_status() -> None:
    default = SHOP["paths"]["/v1/products"]["get"]["responses"]["default"]
    assert default["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/google.rpc.Status"
    }
    assert SHOP["components"]["schemas"]["google.rpc.Status"]["required"] == ["code", "message"]


def test_query_parameters_are_the_fields_bound_by_neither_path_nor_body() -> None:
    document = library_document()
    by_name = {p["name"]: p for p in document["paths"]["/v1/shelves/{shelf}/books"]["get"]["parameters"]}
    assert by_name["shelf"]["in"] == "path"
    assert {name for name, p in by_name.items() if p["in"] == "query"} == {
        "pageSize",
        "kinds",
        "author.name",
        "author.born",
        "tags",
        "minRating",
        "available",
    }
    assert by_name["pageSize"]["schema"]["type"] == "integer"  # query values are plain integers
    assert "cap" in by_name["pageSize"]["description"]
    kinds = by_name["kinds"]
    assert (kinds["style"], kinds["explode"], kinds["schema"]["type"]) == ("form", True, "array")
    assert by_name["author.born"]["schema"]["format"] == "date-time"
    unbound = {p["name"] for p in document["paths"]["/v1/books"]["get"]["parameters"]}
    assert "shelf" in unbound


def test_bodies_follow_the_rule() -> None:
    paths = library_document()["paths"]
    create = paths["/v1/shelves/{shelf}/books"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "anyOf": [{"$ref": "#/components/schemas/test.library.v1.Book"}, {"type": "null"}]
    }
    assert create["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/test.library.v1.Book"
    }
    query = {p["name"] for p in create["parameters"] if p["in"] == "query"}
    assert query == {"requestId"}  # neither the path's shelf nor the body's book
    archive = paths["/v1/books/{id}:archive"]["post"]
    body = archive["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == {"reason"}  # body "*" minus the path field
    assert "query" not in {p["in"] for p in archive["parameters"]}


def test_message_schemas_are_proto3_json() -> None:
    schemas = library_document()["components"]["schemas"]
    book = schemas["test.library.v1.Book"]
    assert book["additionalProperties"] is False
    assert book["properties"]["pages"]["type"] == ["integer", "string", "null"]
    assert book["properties"]["pages"]["format"] == "int64"
    assert book["properties"]["tags"] == {"type": ["array", "null"], "items": {"type": "string"}}
    assert book["properties"]["cover"]["contentEncoding"] == "base64"
    kind = schemas["test.library.v1.Kind"]
    assert kind["anyOf"][0]["enum"] == ["KIND_UNSPECIFIED", "KIND_NOVEL", "KIND_ESSAY"]
    assert library_document(public=["GetBook"])["paths"]["/v1/{name}"]["get"]["security"] == []
