"""Each service's table from its domain states to the proto enum: complete, and same-named."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import pytest

from services.inventory import domain as inventory
from services.inventory.servicer import STATES as RESERVATION_STATES
from services.order.convert import STATUS as ORDER_STATUS
from services.order.domain import OrderStatus
from services.payment import domain as payment
from services.payment.servicer import STATES as PAYMENT_STATES
from services.shipping import domain as shipping
from services.shipping.servicer import STATES as SHIPMENT_STATES
from shop.inventory.v1 import inventory_pb2
from shop.order.v1 import order_pb2
from shop.payment.v1 import payment_pb2
from shop.shipping.v1 import shipping_pb2


@pytest.mark.parametrize(
    ("table", "states", "proto_enum", "prefix"),
    [
        (ORDER_STATUS, OrderStatus, order_pb2.OrderStatus, "ORDER_STATUS"),
        (PAYMENT_STATES, payment.PaymentState, payment_pb2.PaymentState, "PAYMENT_STATE"),
        (SHIPMENT_STATES, shipping.ShipmentState, shipping_pb2.ShipmentState, "SHIPMENT_STATE"),
        (RESERVATION_STATES, inventory.ReservationState, inventory_pb2.ReservationState, "RESERVATION_STATE"),
    ],
)
def test_every_state_maps_to_the_proto_value_of_its_name(
    table: dict[Any, int], states: type[StrEnum], proto_enum: Any, prefix: str
) -> None:
    assert set(table) == set(states)
    assert {proto_enum.Name(table[state]) for state in states} == {f"{prefix}_{s.value}" for s in states}
