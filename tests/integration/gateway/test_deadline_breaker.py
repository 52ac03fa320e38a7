"""One customer's too-short deadlines must not open the gateway's circuit for everyone.

Through a gateway process to the five real services. The gateway's breakers for ``order`` are
set to open after 5 failures in a row, so that a handful of counted failures would show;
the customer then asks for 2 ms per order (``Grpc-Timeout: 2m``), which the order service
mostly cannot meet (CreateOrder now often returns within 5 ms, so the customer orders until
ten were missed). Those are the customer's 504s: another user's order right after must still
go through, not get 503 ``circuit open for 'order'``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.gateway.conftest import GatewayProcess, Shop, register, start_gateway
from tests.integration.gateway.test_e2e import ADDRESS, email, place_order

MISSED_DEADLINES = 10  # twice the failures in a row that would open the breaker if they counted
IMPATIENT_ORDERS = 400  # at most: bounds the loop on a machine that meets 2 ms more often than not


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
    statuses: list[int] = []
    while statuses.count(504) < MISSED_DEADLINES and len(statuses) < IMPATIENT_ORDERS:
        body = {
            "items": [{"sku": "TEA-SENCHA", "quantity": "1"}],
            "shippingAddress": ADDRESS,
            "requestId": uuid.uuid4().hex,
        }
        status, _, data = touchy_gateway.request(
            "POST", "/v1/orders", body, impatient, headers={"Grpc-Timeout": "2m"}
        )
        statuses.append(status)
        assert status != 503, json.loads(data)  # never "circuit open" for the caller's own deadline
    assert statuses.count(504) >= MISSED_DEADLINES, statuses  # the deadline was really missed, repeatedly

    _, patient = register(touchy_gateway, email())
    order = place_order(touchy_gateway, patient)
    assert order["status"] == "ORDER_STATUS_CONFIRMED"
