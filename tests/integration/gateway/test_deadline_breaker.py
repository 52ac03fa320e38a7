"""One customer's too-short deadlines must not open the gateway's circuit for everyone.

Through a gateway process to the five real services. The gateway's breakers for ``order`` are
set to open after 5 failures in a row, so that a handful of counted failures would show;
the customer then asks for 5 ms per order (``Grpc-Timeout: 5m``), which the order service
cannot meet. Those are the customer's 504s: another user's order right after must still go
through, not get 503 ``circuit open for 'order'``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.gateway.conftest import GatewayProcess, Shop, register, start_gateway
from tests.integration.gateway.test_e2e import ADDRESS, email, place_order

IMPATIENT_ORDERS = 40


@pytest.fixture(scope="module")
def touchy_gateway(shop: Shop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = shop.gateway_env()
    env.update(
        GATEWAY_RATE_LIMIT_PER_SECOND="0",
        MESH_POLICY__order__breaker__consecutive_failures="5",
        MESH_POLICY__order__breaker__open_wait="60",
    )
    started = start_gateway(tmp_path_factory.mktemp("touchy-gateway"), env)
    yield started
    started.stop()


def test_a_customers_own_short_deadlines_open_no_circuit_for_others(touchy_gateway: GatewayProcess) -> None:
    _, impatient = register(touchy_gateway, email())
    statuses = []
    for _ in range(IMPATIENT_ORDERS):
        body = {
            "items": [{"sku": "TEA-SENCHA", "quantity": "1"}],
            "shippingAddress": ADDRESS,
            "requestId": uuid.uuid4().hex,
        }
        status, _, data = touchy_gateway.request(
            "POST", "/v1/orders", body, impatient, headers={"Grpc-Timeout": "5m"}
        )
        statuses.append(status)
        assert status != 503, json.loads(data)  # never "circuit open" for the caller's own deadline
    assert statuses.count(504) >= 5, statuses  # the deadline was really missed, repeatedly

    _, patient = register(touchy_gateway, email())
    order = place_order(touchy_gateway, patient)
    assert order["status"] == "ORDER_STATUS_CONFIRMED"
