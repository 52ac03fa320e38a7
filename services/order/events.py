"""The order events the order service publishes (contract: protos/shop/order/v1/events.proto).

An event is built from the order exactly as it is being committed and written to the outbox
by the store in that same transaction, so "the order changed" and "the event exists" are one
fact. Only three transitions are events: created (PENDING), confirmed and cancelled.
"""

from __future__ import annotations

import uuid

from services.common.messaging.outbox import OutboxMessage
from services.common.values import timestamp, utc_now
from services.order.convert import order_pb
from services.order.domain import Order, OrderStatus
from shop.order.v1 import events_pb2

MESSAGE_TYPE = events_pb2.OrderEvent.DESCRIPTOR.full_name  # "shop.order.v1.OrderEvent"
CREATED = "order.created"
CONFIRMED = "order.confirmed"
CANCELLED = "order.cancelled"
KINDS = {
    CREATED: events_pb2.ORDER_EVENT_KIND_CREATED,
    CONFIRMED: events_pb2.ORDER_EVENT_KIND_CONFIRMED,
    CANCELLED: events_pb2.ORDER_EVENT_KIND_CANCELLED,
}
STATUS_EVENTS = {OrderStatus.CONFIRMED: CONFIRMED, OrderStatus.CANCELLED: CANCELLED}


def transition_event(previous: OrderStatus, current: OrderStatus) -> str | None:
    """The routing key of the event a status change raises, if any (none without a change)."""
    return STATUS_EVENTS.get(current) if current is not previous else None


def order_event(
    routing_key: str, order: Order, event_id: str | None = None, now: str | None = None
) -> OutboxMessage:
    """The outbox row of one event about ``order`` (its snapshot as committed)."""
    event_id = event_id or str(uuid.uuid4())
    occur = now or utc_now()
    body = events_pb2.OrderEvent(
        event_id=event_id, kind=KINDS[routing_key], occur_time=timestamp(occur), order=order_pb(order)
    )
    return OutboxMessage(
        event_id=event_id,
        routing_key=routing_key,
        message_type=MESSAGE_TYPE,
        payload=body.SerializeToString(),
        create_time=occur,
    )
