"""Through `python -m gateway` to the real services: one text policy for every free-text
field, one for every identifier (services/common/limits.py), each refusal a 400 naming the field.

Display names refused bidi controls and zero-width characters, but addresses took them (an
order could ship to a line that reads differently from what it holds); a JSON lone
surrogate escape in a public route's body was a 500.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.integration.gateway.conftest import GatewayProcess, Shop, register
from tests.integration.gateway.test_e2e import ADDRESS

BAD = {"rlo": "\u202e", "lri": "\u2066", "zwsp": "\u200b", "bom": "\ufeff", "nul": "\x00", "newline": "\n"}


def _email() -> str:
    return f"t-{uuid.uuid4().hex[:10]}@example.com"


def _violations(raw: bytes) -> set[str]:
    body = json.loads(raw)
    assert body["code"] == 3, body
    return {v["field"] for d in body.get("details", []) for v in d.get("fieldViolations", [])}


def _order(address: dict[str, str], request_id: str | None = None) -> dict[str, Any]:
    return {
        "items": [{"sku": "TEA-SENCHA", "quantity": "1"}],
        "shippingAddress": address,
        "requestId": request_id or uuid.uuid4().hex,
    }


@pytest.fixture(scope="module")
def customer(gateway: GatewayProcess) -> str:
    return register(gateway, _email())[1]


@pytest.mark.parametrize("kind", sorted(BAD))
def test_free_text_fields_refuse_invisible_and_line_breaking_characters(
    gateway: GatewayProcess, customer: str, kind: str
) -> None:
    bad = f"a{BAD[kind]}b"
    signup = {"email": _email(), "password": "correct-horse-9", "displayName": bad}
    status, _, raw = gateway.request("POST", "/v1/users", signup)
    assert status == 400 and "display_name" in _violations(raw), (status, raw[:300])
    for field, json_name in (("line1", "line1"), ("recipient", "recipient"), ("postal_code", "postalCode")):
        status, _, raw = gateway.request("POST", "/v1/orders", _order({**ADDRESS, json_name: bad}), customer)
        assert status == 400, (field, status, raw[:300])
        assert f"shipping_address.{field}" in _violations(raw), raw[:300]


@pytest.mark.parametrize("kind", sorted(BAD))
def test_identifiers_refuse_them_too(gateway: GatewayProcess, shop: Shop, customer: str, kind: str) -> None:
    bad = f"a{BAD[kind]}b"
    status, _, raw = gateway.request("POST", "/v1/orders", _order(ADDRESS, bad), customer)
    assert status == 400 and "request_id" in _violations(raw), (status, raw[:300])
    admin = shop.keys.token(f"usr_{uuid.uuid4().hex}", ("admin", "customer"))
    body = {"quantity": "1", "requestId": bad}
    status, _, raw = gateway.request("POST", "/v1/products/TEA-SENCHA:restock", body, admin)
    assert status == 400 and "request_id" in _violations(raw), (status, raw[:300])


@pytest.mark.parametrize(
    ("path", "raw_body", "field"),
    [
        (
            "/v1/users",
            b'{"email": "a@example.com", "password": "x", "displayName": "\\ud800"}',
            "display_name",
        ),
        ("/v1/users:login", b'{"email": "\\udc00a@example.com", "password": "secret-1"}', "email"),
        ("/v1/users:login", b'{"email": "a@example.com", "password": "p\\ud800"}', "password"),
    ],
)
def test_a_lone_surrogate_in_a_public_route_is_400_naming_the_field(
    gateway: GatewayProcess, path: str, raw_body: bytes, field: str
) -> None:
    status, _, raw = gateway.request("POST", path, headers={"Content-Type": "application/json"}, raw=raw_body)
    assert status == 400, (status, raw[:300])
    assert _violations(raw) <= {field, "displayName", "email", "password"} and _violations(raw), raw[:300]
    assert b"codec" not in raw and b"surrogates not allowed" not in raw, raw[:300]
