"""One customer's too-short deadlines must not open the gateway's circuit for everyone.

Through a gateway process to the five real services. The gateway's breakers for ``order`` are
set to open after 5 failures in a row, so that a handful of counted failures would show;
the customer then asks for 1 ms per order (``Grpc-Timeout: 1m``), which the order service
can rarely meet: it answers PENDING once the order is stored, which takes longer. Those are
the customer's 504s, and the customer orders until ten came in a row (an answer in time
resets a breaker's count of failures in a row; at 2 ms, answers in time broke the misses up
into runs shorter than five, so even counted misses opened nothing). Another
user's order right after must still go through, not get 503 ``circuit open for 'order'``.
This test fails if the gateway's attempt engine counts the caller's deadline as a failure.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.gateway.conftest import GatewayProcess, Shop, register, start_gateway
from tests.integration.gateway.test_e2e import ADDRESS, email, place_order

MISSED_IN_A_ROW = 10  # twice the failures in a row that would open the breaker if they counted
IMPATIENT_ORDERS = 400  # at most: bounds the loop on a machine that sometimes answers within 1 ms


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
    missed_in_a_row = 0
    while missed_in_a_row < MISSED_IN_A_ROW and len(statuses) < IMPATIENT_ORDERS:
        body = {
            "items": [{"sku": "TEA-SENCHA", "quantity": "1"}],
            "shippingAddress": ADDRESS,
            "requestId": uuid.uuid4().hex,
        }
        status, _, data = touchy_gateway.request(
            "POST", "/v1/orders", body, impatient, headers={"Grpc-Timeout": "1m"}
        )
        statuses.append(status)
        assert status != 503, json.loads(data)  # never "circuit open" for the caller's own deadline
        missed_in_a_row = missed_in_a_row + 1 if status == 504 else 0
    # The deadline was really missed, often enough in a row to have opened the breaker had it counted.
    assert missed_in_a_row == MISSED_IN_A_ROW, statuses

    _, patient = register(touchy_gateway, email())
    order = place_order(touchy_gateway, patient)
    assert order["status"] == "ORDER_STATUS_CONFIRMED"
