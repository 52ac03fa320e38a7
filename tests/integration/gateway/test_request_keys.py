"""Through the gateway: a CreateOrder request_id reused with another body is a 409, and
registering a taken email discloses nothing."""

from __future__ import annotations

import uuid

from tests.integration.gateway.conftest import GatewayProcess, register
from tests.integration.gateway.test_e2e import ADDRESS


def email() -> str:
    return f"u-{uuid.uuid4().hex[:10]}@example.com"


def test_a_reused_order_request_id_with_another_body_is_409(gateway: GatewayProcess) -> None:
    _, token = register(gateway, email())
    key = f"k-{uuid.uuid4().hex}"
    body = {"items": [{"sku": "TEA-SENCHA", "quantity": "1"}], "shippingAddress": ADDRESS, "requestId": key}
    status, first = gateway.json("POST", "/v1/orders", body, token)
    assert status == 200, first
    other = {**body, "items": [{"sku": "TEA-MATCHA", "quantity": "3"}]}
    status, error = gateway.json("POST", "/v1/orders", other, token)
    assert status == 409, error
    assert error["code"] == 6 and key in error["message"]
    [info] = [d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert (info["reason"], info["metadata"]) == ("IDEMPOTENCY_KEY_REUSED", {"request_id": key})
    status, again = gateway.json("POST", "/v1/orders", body, token)
    assert status == 200 and again["orderId"] == first["orderId"]


def test_registering_a_taken_email_answers_like_a_registration(gateway: GatewayProcess) -> None:
    taken = email()
    owner, _ = register(gateway, taken)
    body = {"email": taken, "password": "another-horse-7", "displayName": "Mallory"}
    status, answer = gateway.json("POST", "/v1/users", body)
    assert status == 200, answer
    assert answer["userId"] != owner and answer["email"] == taken and answer["displayName"] == "Mallory"
    # The existing account is untouched: its password still logs in, the attacker's does not.
    status, _ = gateway.json("POST", "/v1/users:login", {"email": taken, "password": "another-horse-7"})
    assert status == 401
    status, login = gateway.json("POST", "/v1/users:login", {"email": taken, "password": "correct-horse-9"})
    assert status == 200 and login["userId"] == owner
