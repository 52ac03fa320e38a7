"""The order as its API proto: one conversion shared by the RPCs and the published events."""

from __future__ import annotations

from services.common.values import money, timestamp
from services.order.domain import Order, OrderStatus
from shop.order.v1 import order_pb2 as pb
from shop.shipping.v1 import shipping_pb2

# A table rather than Value(f"ORDER_STATUS_{...}"): the type checker sees the proto enum's
# type, and the mapping is visible in one place.
STATUS = {
    OrderStatus.PENDING: pb.ORDER_STATUS_PENDING,
    OrderStatus.CONFIRMED: pb.ORDER_STATUS_CONFIRMED,
    OrderStatus.CANCELLED: pb.ORDER_STATUS_CANCELLED,
}


def order_pb(order: Order) -> pb.Order:
    a = order.address
    return pb.Order(
        order_id=order.order_id,
        user_id=order.user_id,
        items=[
            pb.OrderItem(sku=i.sku, quantity=i.quantity, unit_price=money(i.unit_price_minor, order.currency))
            for i in order.items
        ],
        total=money(order.total_minor, order.currency),
        status=STATUS[order.status],
        status_reason=order.status_reason,
        shipping_address=shipping_pb2.Address(
            recipient=a.recipient,
            line1=a.line1,
            city=a.city,
            postal_code=a.postal_code,
            country_code=a.country_code,
        ),
        payment_id=order.payment_id,
        reservation_id=order.reservation_id,
        shipment_id=order.shipment_id,
        steps=[
            pb.OrderStep(name=s.name, outcome=s.outcome.value, detail=s.detail, time=timestamp(s.time))
            for s in order.steps
        ],
        create_time=timestamp(order.create_time),
        update_time=timestamp(order.update_time),
    )
