"""Through `python -m gateway` to the five real services: the shop over REST/JSON."""

from __future__ import annotations

import http.client
import json
import uuid

from tests.integration.gateway.conftest import GatewayProcess, Shop, http_request, register

ADDRESS = {
    "recipient": "Ada",
    "line1": "1-1 Chiyoda",
    "city": "Tokyo",
    "postalCode": "100-0001",
    "countryCode": "JP",
}


def email() -> str:
    return f"u-{uuid.uuid4().hex[:10]}@example.com"


def place_order(gateway: GatewayProcess, token: str) -> dict[str, object]:
    body = {
        "items": [{"sku": "TEA-SENCHA", "quantity": "2"}],
        "shippingAddress": ADDRESS,
        "requestId": uuid.uuid4().hex,
    }
    status, order = gateway.json("POST", "/v1/orders", body, token)
    assert status == 200, order
    return order  # type: ignore[no-any-return]


def test_register_login_browse_order_get_list(gateway: GatewayProcess) -> None:
    user_id, token = register(gateway, email())
    status, products = gateway.json("GET", "/v1/products?pageSize=2")
    assert status == 200 and len(products["products"]) == 2 and products["nextPageToken"]
    status, product = gateway.json("GET", "/v1/products/TEA-SENCHA")
    assert status == 200 and product["sku"] == "TEA-SENCHA" and isinstance(product["stock"], str)
    order = place_order(gateway, token)
    assert order["userId"] == user_id and order["status"] == "ORDER_STATUS_CONFIRMED"
    assert order["items"][0]["quantity"] == "2"  # type: ignore[index]
    status, fetched = gateway.json("GET", f"/v1/orders/{order['orderId']}", token=token)
    assert status == 200 and fetched["orderId"] == order["orderId"]
    status, listed = gateway.json("GET", "/v1/orders?page_size=10", token=token)
    assert status == 200 and [o["orderId"] for o in listed["orders"]] == [order["orderId"]]


def test_someone_elses_order_is_404(gateway: GatewayProcess) -> None:
    _, alice = register(gateway, email())
    _, bob = register(gateway, email())
    order = place_order(gateway, alice)
    status, error = gateway.json("GET", f"/v1/orders/{order['orderId']}", token=bob)
    assert status == 404 and error["code"] == 5
    status, listed = gateway.json("GET", "/v1/orders", token=bob)
    assert status == 200 and listed["orders"] == []


def test_profile_update_with_nested_path_field_and_field_body(gateway: GatewayProcess) -> None:
    user_id, token = register(gateway, email())
    status, user = gateway.json(
        "PATCH", f"/v1/users/{user_id}?updateMask=displayName", {"displayName": "Renamed"}, token
    )
    assert status == 200, user
    assert user["displayName"] == "Renamed" and user["userId"] == user_id


def test_service_errors_keep_their_details(gateway: GatewayProcess) -> None:
    status, error = gateway.json(
        "POST", "/v1/users", {"email": "nope", "password": "short", "displayName": "x"}
    )
    assert status == 400 and error["code"] == 3
    violations = {v["field"] for d in error["details"] for v in d.get("fieldViolations", [])}
    assert {"email", "password"} <= violations
    _, token = register(gateway, email())
    unknown = {"items": [{"sku": "NO-SUCH-SKU", "quantity": 1}], "shippingAddress": ADDRESS}
    status, failed = gateway.json("POST", "/v1/orders", unknown, token)
    assert 400 <= status < 500 and failed["code"] in (3, 5, 9), failed
    assert failed["details"], failed


def test_failed_login_and_missing_token_carry_a_challenge(gateway: GatewayProcess) -> None:
    status, headers, _ = gateway.request(
        "POST", "/v1/users:login", {"email": "nobody@example.com", "password": "p" * 10}
    )
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    status, headers, body = gateway.request("GET", "/v1/orders")
    assert status == 401 and headers["www-authenticate"] == 'Bearer realm="tsunagu"'
    assert json.loads(body)["code"] == 16


def test_admin_only_restock_is_403_for_a_customer(gateway: GatewayProcess) -> None:
    _, token = register(gateway, email())
    status, error = gateway.json(
        "POST", "/v1/products/TEA-SENCHA:restock", {"quantity": "1", "requestId": "r"}, token
    )
    assert status == 403 and error["code"] == 7


def test_unknown_path_and_wrong_method_have_the_status_shape(gateway: GatewayProcess) -> None:
    status, headers, body = gateway.request("GET", "/v1/nothing-here")
    assert status == 404 and json.loads(body)["code"] == 5 and headers["x-request-id"]
    status, headers, body = gateway.request("DELETE", "/v1/products")
    assert status == 405 and headers["allow"] == "GET" and json.loads(body)["code"] == 12


def test_bad_input_is_400_never_5xx(gateway: GatewayProcess) -> None:
    _, token = register(gateway, email())
    cases = [
        ("POST", "/v1/orders", b'{"items": [{"sku": "TEA-SENCHA", "quantity": "lots"}]}'),
        ("POST", "/v1/orders", b'{"unknownField": 1}'),
        ("POST", "/v1/orders", b"{"),
        ("POST", "/v1/orders", b"[" * 200 + b"]" * 200),
        ("GET", "/v1/orders?pageSize=abc", None),
        ("GET", "/v1/orders?bogus=1", None),
        ("GET", "/v1/orders/%ff%fe", None),
    ]
    for method, path, raw in cases:
        status, _, body = gateway.request(
            method, path, token=token, raw=raw, headers={"Content-Type": "application/json"}
        )
        assert status == 400, (path, raw, body)
        assert json.loads(body)["code"] == 3
    status, _, _ = gateway.request(
        "POST",
        "/v1/orders",
        token=token,
        raw=b"x=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 415
    status, _, _ = gateway.request("POST", "/v1/orders", token=token, raw=b"x" * (2 * 1024 * 1024))
    assert status == 413


def test_request_id_and_trace_context_are_passed_on(gateway: GatewayProcess) -> None:
    status, headers, _ = gateway.request("GET", "/v1/products", headers={"X-Request-Id": "my-request-1"})
    assert status == 200 and headers["x-request-id"] == "my-request-1"
    status, headers, _ = gateway.request(
        "GET", "/v1/products", headers={"Grpc-Timeout": "2S", "traceparent": "garbage"}
    )
    assert status == 200 and len(headers["x-request-id"]) == 32
    status, _, _ = gateway.request("GET", "/v1/products", headers={"Grpc-Timeout": "soon"})
    assert status == 400
    status, _, _ = gateway.request("GET", "/v1/products", headers={"Grpc-Metadata-Authorization": "Bearer x"})
    assert status == 400


def test_watch_order_streams_ndjson_and_sse(gateway: GatewayProcess) -> None:
    _, token = register(gateway, email())
    order = place_order(gateway, token)
    for accept, content_type in (
        ("application/json", "application/x-ndjson"),
        ("text/event-stream", "text/event-stream"),
    ):
        connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
        connection.request(
            "GET",
            f"/v1/orders/{order['orderId']}:watch",
            headers={"Authorization": f"Bearer {token}", "Accept": accept},
        )
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("content-type") == content_type
        body = response.read().decode()
        connection.close()
        if content_type == "text/event-stream":
            events = [block for block in body.split("\n\n") if block]
            assert events and all(e.startswith("event: message\ndata: ") for e in events)
            last = json.loads(events[-1].split("data: ", 1)[1])
        else:
            last = json.loads(body.splitlines()[-1])["result"]
        assert last["order"]["orderId"] == order["orderId"]
        assert last["order"]["status"] == "ORDER_STATUS_CONFIRMED"


def test_watching_someone_elses_order_is_a_plain_404(gateway: GatewayProcess) -> None:
    _, alice = register(gateway, email())
    _, bob = register(gateway, email())
    order = place_order(gateway, alice)
    status, headers, body = gateway.request("GET", f"/v1/orders/{order['orderId']}:watch", token=bob)
    assert status == 404 and headers["content-type"] == "application/json" and json.loads(body)["code"] == 5


def test_health_ready_metrics_openapi_docs(gateway: GatewayProcess, shop: Shop) -> None:
    assert gateway.request("GET", "/healthz")[0] == 200
    status, _, body = gateway.request("GET", "/readyz")
    assert status == 200 and json.loads(body)["routes"] == 28
    gateway.request("GET", "/v1/products")
    assert gateway.request("GET", "/metrics")[0] == 404  # not on the API port
    status, headers, metrics = http_request(gateway.metrics_port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b'gateway_requests_total{method="GET",route="/v1/products",status="200"}' in metrics
    assert b"gateway_upstream_calls_total" in metrics
    status, _, document = gateway.request("GET", "/openapi.json")
    spec = json.loads(document)
    assert status == 200 and spec["openapi"] == "3.1.0"
    assert spec["paths"]["/v1/users/{user_id}"].keys() == {"get", "patch"}
    assert spec["paths"]["/v1/orders"]["get"]["security"] == [{"bearerAuth": []}]
    assert spec["paths"]["/v1/products"]["get"]["security"] == []
    status, headers, page = gateway.request("GET", "/docs")
    assert status == 200 and headers["content-type"].startswith("text/html")
    for asset in (b"/docs/docs.js", b"/docs/docs.css"):
        assert asset in page
        assert gateway.request("GET", asset.decode())[0] == 200
    assert b"http://" not in page and b"https://" not in page  # no CDN
    assert gateway.request("POST", "/healthz")[0] == 405
