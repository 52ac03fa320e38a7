"""Transcoding failures: whatever a client sends is a 400 naming the field; a gateway bug is a 500.

The JSON decoder accepts escapes that are not Unicode text (``"\\ud800"``, a lone surrogate);
protobuf refuses such a string when it is set, when an enum is looked up by it, and when an
error message quoting it is built. Those used to escape the transcoder as UnicodeEncodeError
or SystemError and came back as 500s. The sweep below throws hostile values at every field
of every shop request; the last tests pin what a genuine bug in the gateway looks like.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import Descriptor
from google.rpc import error_details_pb2

from gateway.app import Gateway
from gateway.errors import GatewayError, status_json
from gateway.http import Request, Response
from gateway.rules import Binding, bindings_of_files, load_files
from gateway.settings import DEFAULT_PROTO_MODULES, settings_from_env
from gateway.transcode import RequestTranscoder
from gateway.upstream import StaticChannelFactory
from mesh.identity import Principal
from tests.unit.gateway.library import library_file

SHOP = list(bindings_of_files(load_files(DEFAULT_PROTO_MODULES)))
LIBRARY = {b.rpc.rsplit(".", 1)[1]: b for b in bindings_of_files([library_file()]) if not b.index}
LONE_SURROGATE = "\ud800"
HOSTILE: list[Any] = [
    LONE_SURROGATE,
    f"ok{LONE_SURROGATE}ok",
    [LONE_SURROGATE],
    {LONE_SURROGATE: 1},
    {"units": LONE_SURROGATE},
    None,
    True,
    -1,
    2**64,
    -(2**70),
    1.5,
    1e308,
    "",
    "9" * 400,
    "NaN",
    "-Infinity",
    [],
    [None],
    [[1]],
    {},
    {"nested": {"deeper": [{}]}},
    "10000-01-01T00:00:00Z",
    "315576000001s",
]


def _binding(rpc: str) -> Binding:
    return next(b for b in SHOP if b.rpc == rpc)


def _violations(error: GatewayError) -> dict[str, str]:
    found: dict[str, str] = {}
    for detail in error.details:
        if isinstance(detail, error_details_pb2.BadRequest):
            found.update((v.field, v.description) for v in detail.field_violations)
    return found


def _build(binding: Binding, body: bytes, path: dict[str, str] | None = None) -> GatewayError:
    transcoder = RequestTranscoder(binding, max_json_depth=32, max_page_size=100)
    with pytest.raises(GatewayError) as caught:
        transcoder.build(path or {}, "", body)
    return caught.value


def test_lone_surrogate_in_a_string_field_is_400_naming_the_field() -> None:
    error = _build(_binding("shop.user.v1.UserService.CreateUser"), b'{"email": "a\\ud800b"}')
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.http_status == 400
    assert list(_violations(error)) == ["email"]
    json.loads(status_json(error.status()))


def test_lone_surrogate_in_a_repeated_string_is_400_naming_the_element() -> None:
    error = _build(LIBRARY["CreateBook"], b'{"tags": ["fine", "\\udfff"]}', {"shelf": "s"})
    assert list(_violations(error)) == ["book.tags[1]"]


def test_lone_surrogate_as_an_enum_name_is_400_naming_the_field() -> None:
    error = _build(LIBRARY["CreateBook"], b'{"kind": "\\ud800"}', {"shelf": "s"})
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(_violations(error)) == ["book.kind"]


def test_lone_surrogate_as_a_field_name_is_400_and_the_answer_renders() -> None:
    error = _build(_binding("shop.user.v1.UserService.CreateUser"), b'{"\\ud800": 1}')
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    body = json.loads(status_json(error.status()))
    assert body["code"] == 3 and body["details"][0]["fieldViolations"][0]["description"] == "unknown field"


def _field_paths(descriptor: Descriptor, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """JSON name paths of every field, into singular sub-messages two levels down."""
    for field in descriptor.fields:
        path = (*prefix, field.json_name)
        yield path
        if field.message_type is not None and len(prefix) < 2 and not field.is_repeated:
            yield from _field_paths(field.message_type, path)


def _nest(path: tuple[str, ...], value: Any) -> Any:
    for name in reversed(path):
        value = {name: value}
    return value


@pytest.mark.parametrize("binding", [b for b in SHOP if b.body == "*"], ids=lambda b: b.rpc.rsplit(".", 1)[1])
def test_no_hostile_body_value_escapes_as_anything_but_a_400(binding: Binding) -> None:
    transcoder = RequestTranscoder(binding, max_json_depth=32, max_page_size=100)
    path = {v.name: "x" for v in binding.template.variables}
    tried = 0
    for field_path in _field_paths(binding.method.input_type):
        for value in HOSTILE:
            body = json.dumps(_nest(field_path, value)).encode()
            try:
                transcoder.build(path, "", body)
            except GatewayError as error:
                assert error.code == grpc.StatusCode.INVALID_ARGUMENT, (field_path, value, error)
                assert _violations(error), (field_path, value, error)
                json.loads(status_json(error.status()))
            tried += 1
    assert tried >= len(HOSTILE)


class _Anonymous:
    def authenticate(self, authorization: str | None) -> Principal | None:
        return None


def _gateway() -> Gateway:
    settings = settings_from_env({"GATEWAY_RATE_LIMIT_PER_SECOND": "0"})
    return Gateway(settings, StaticChannelFactory({}), auth=_Anonymous())


def _post(gateway: Gateway, path: str, body: bytes) -> Response:
    request = Request("POST", path, "", [("content-type", "application/json")], body, "127.0.0.1")
    response = asyncio.run(gateway.handle(request))
    assert isinstance(response, Response)
    return response


def test_the_gateway_answers_a_lone_surrogate_with_a_400_status() -> None:
    response = _post(_gateway(), "/v1/users", b'{"email": "\\ud800", "password": "x"}')
    body = json.loads(response.body)
    assert response.status == 400 and body["code"] == 3
    assert body["details"][0]["fieldViolations"][0]["field"] == "email"


def test_a_bug_while_transcoding_is_a_logged_500_not_the_clients_400(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = _gateway()
    route = next(r for r in gateway.routes if r.binding.rpc == "shop.user.v1.UserService.CreateUser")

    def broken(path: dict[str, str], query: str, body: bytes) -> Any:
        raise KeyError("a gateway bug")

    monkeypatch.setattr(route.transcoder, "build", broken)
    with caplog.at_level(logging.ERROR, logger="gateway"):
        response = _post(gateway, "/v1/users", b'{"email": "a@example.com"}')
    body = json.loads(response.body)
    assert response.status == 500 and body["code"] == grpc.StatusCode.INTERNAL.value[0]
    assert "a gateway bug" not in body["message"]  # the client learns nothing of the internals
    assert dict(response.headers)["x-request-id"]
    raised = [r.exc_info[1] for r in caplog.records if r.exc_info is not None]
    assert any(isinstance(e, KeyError) and "a gateway bug" in str(e) for e in raised), caplog.records
    assert b'gateway_requests_total{method="POST",route="/v1/users",status="500"}' in gateway.metrics.render()
