"""Through `python -m gateway` to the five real services: every id and text field is bounded.

An id of thousands of characters used to reach the service, which echoed it into its
NOT_FOUND message; the trailer then exceeded grpc-core's metadata limit, and the gateway
answered 429 with grpc-core's own text. Now each service refuses an over-long or malformed
id or text as INVALID_ARGUMENT naming the field (services/common/limits.py), which the
gateway passes on as a 400 with the BadRequest violation.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from tests.integration.gateway.conftest import GatewayProcess, Shop

LONG = "x" * 5000
# (method, path, body, the field the violation must name)
PATH_IDS = [
    ("GET", f"/v1/orders/{LONG}", None, "order_id"),
    ("GET", f"/v1/orders/{LONG}:watch", None, "order_id"),
    ("POST", f"/v1/orders/{LONG}:cancel", {}, "order_id"),
    ("GET", f"/v1/products/{LONG}", None, "sku"),
    ("POST", f"/v1/products/{LONG}:restock", {"quantity": "1"}, "sku"),
    ("GET", f"/v1/users/{LONG}", None, "user_id"),
    ("PATCH", f"/v1/users/{LONG}?updateMask=displayName", {"displayName": "n"}, "user.user_id"),
    ("GET", f"/v1/payments/{LONG}", None, "payment_id"),
    ("POST", f"/v1/payments/{LONG}:capture", {}, "payment_id"),
    ("GET", f"/v1/invoices/{LONG}", None, "invoice_id"),
    ("GET", f"/v1/shipments/{LONG}", None, "shipment_id"),
    ("POST", f"/v1/shipments/{LONG}:cancel", {}, "shipment_id"),
    ("GET", f"/v1/reservations/{LONG}", None, "reservation_id"),
    ("POST", f"/v1/reservations/{LONG}:release", {}, "reservation_id"),
]
TEXT_FIELDS = [
    ("POST", "/v1/products/TEA-SENCHA:restock", {"quantity": "1", "requestId": LONG}, "request_id"),
    ("POST", "/v1/orders/ord_0:cancel", {"requestId": LONG}, "request_id"),
    ("GET", f"/v1/products?pageToken={LONG}", None, "page_token"),
    ("GET", f"/v1/orders?pageToken={LONG}", None, "page_token"),
    ("GET", f"/v1/invoices?pageToken={LONG}", None, "page_token"),
    ("GET", f"/v1/users?pageToken={LONG}", None, "page_token"),
    ("GET", f"/v1/notifications?pageToken={LONG}", None, "page_token"),
    ("PATCH", f"/v1/users/usr_x?updateMask={LONG}", {"displayName": "n"}, "update_mask.paths[0]"),
    ("POST", "/v1/users:login", {"email": "a@example.com", "password": LONG}, "password"),
]


def _admin(shop: Shop) -> str:
    return shop.keys.token(f"usr_{uuid.uuid4().hex}", ("admin", "customer"))


def _violations(body: dict[str, Any]) -> set[str]:
    return {v["field"] for d in body.get("details", []) for v in d.get("fieldViolations", [])}


@pytest.mark.parametrize(("method", "path", "body", "field"), PATH_IDS, ids=[c[1][:24] for c in PATH_IDS])
def test_an_over_long_id_in_the_path_is_400_naming_the_field(
    gateway: GatewayProcess, shop: Shop, method: str, path: str, body: Any, field: str
) -> None:
    status, _, raw = gateway.request(method, path, body, token=_admin(shop))
    text = raw.decode()
    assert "Stream removed" not in text and "metadata" not in text, text[:300]
    assert status == 400, (status, text[:300])
    error = json.loads(raw)
    assert error["code"] == 3 and field in _violations(error), error
    assert len(raw) < 2000, "the answer must not echo the whole id back"


@pytest.mark.parametrize(("method", "path", "body", "field"), TEXT_FIELDS, ids=[c[3] for c in TEXT_FIELDS])
def test_an_over_long_text_field_is_400_naming_the_field(
    gateway: GatewayProcess, shop: Shop, method: str, path: str, body: Any, field: str
) -> None:
    status, _, raw = gateway.request(method, path, body, token=_admin(shop))
    assert status == 400, (status, raw[:300])
    error = json.loads(raw)
    assert error["code"] == 3 and field in _violations(error), error
    assert len(raw) < 2000, "the answer must not echo the whole value back"


def test_an_id_at_the_bound_is_still_an_ordinary_answer(gateway: GatewayProcess, shop: Shop) -> None:
    status, _, raw = gateway.request("GET", f"/v1/orders/ord_{'a' * 124}", token=_admin(shop))
    assert status == 404 and json.loads(raw)["code"] == 5, raw[:300]
