"""Customer notifications: recorded from order events, listed by their owner.

The user service consumes ``order.created``, ``order.confirmed`` and ``order.cancelled``
(queue ``<namespace>.notifications``) and records one notification per event for the order's
customer. The consumer (:mod:`services.common.messaging.consumer`) runs
:func:`record_notification` in one transaction with its inbox claim, so a redelivered event
adds nothing; ``event_id`` is kept on each row, not unique, so that property is testable.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from services.common.app import ServiceContext
from services.common.database import Database, Row, Tx
from services.common.errors import InvalidArgument
from services.common.messaging.consumer import EventConsumer, Malformed, start_consumer
from services.common.messaging.consumer_settings import ConsumerSettings
from services.common.values import minor_units, new_id, utc_now
from shop.order.v1 import events_pb2

CONSUMER = "notifications"
ROUTING_KEYS = ("order.created", "order.confirmed", "order.cancelled")


class NotificationKind(StrEnum):
    ORDER_CREATED = "ORDER_CREATED"
    ORDER_CONFIRMED = "ORDER_CONFIRMED"
    ORDER_CANCELLED = "ORDER_CANCELLED"


KINDS = {
    events_pb2.ORDER_EVENT_KIND_CREATED: NotificationKind.ORDER_CREATED,
    events_pb2.ORDER_EVENT_KIND_CONFIRMED: NotificationKind.ORDER_CONFIRMED,
    events_pb2.ORDER_EVENT_KIND_CANCELLED: NotificationKind.ORDER_CANCELLED,
}


@dataclass(frozen=True)
class NotificationRecord:
    notification_id: str
    user_id: str
    order_id: str
    event_id: str
    kind: NotificationKind
    text: str
    create_time: str


def _record(row: Row) -> NotificationRecord:
    return NotificationRecord(
        row["notification_id"],
        row["user_id"],
        row["order_id"],
        row["event_id"],
        NotificationKind(row["kind"]),
        row["text"],
        row["create_time"],
    )


def notification_text(event: events_pb2.OrderEvent) -> str:
    """What the customer reads; the amount as ``43.00 EUR`` when the order has a valid total."""
    order = event.order
    try:
        minor = minor_units(order.total, "order.total")
        amount = f"{minor // 100}.{minor % 100:02d} {order.total.currency_code}"
    except InvalidArgument:
        amount = "amount unknown"
    if event.kind == events_pb2.ORDER_EVENT_KIND_CREATED:
        return f"We received your order {order.order_id} ({amount})."
    if event.kind == events_pb2.ORDER_EVENT_KIND_CONFIRMED:
        return f"Your order {order.order_id} is confirmed and paid ({amount})."
    reason = f": {order.status_reason}" if order.status_reason else "."
    return f"Your order {order.order_id} was cancelled{reason}"


def record_notification(tx: Tx, event: events_pb2.OrderEvent) -> None:
    """One notification for the order's customer (inside the consumer's transaction)."""
    kind = KINDS.get(event.kind)
    if kind is None or not event.order.user_id:
        raise Malformed("an order event needs a known kind and order.user_id")
    tx.execute(
        "INSERT INTO notifications (notification_id, user_id, order_id, event_id, kind, text, create_time) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            new_id("ntf"),
            event.order.user_id,
            event.order.order_id,
            event.event_id,
            kind.value,
            notification_text(event),
            utc_now(),
        ),
    )


class NotificationStore:
    """Reads of the notifications table."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def list(self, user_id: str, after: tuple[str, str] | None, limit: int) -> list[NotificationRecord]:
        """Up to ``limit`` of one user's notifications, newest first, after a page position."""
        params: list[object] = [user_id]
        clause = ""
        if after is not None:
            clause = "AND (create_time < ? OR (create_time = ? AND notification_id < ?)) "
            params.extend((after[0], after[0], after[1]))
        sql = (
            f"SELECT * FROM notifications WHERE user_id = ? {clause}"
            "ORDER BY create_time DESC, notification_id DESC LIMIT ?"
        )
        rows = await self._db.read(lambda tx: tx.query(sql, (*params, limit)))
        return [_record(r) for r in rows]


def start_notifications(context: ServiceContext, settings: ConsumerSettings) -> EventConsumer | None:
    """Start the notification consumer when the bus is on; it stops with the process."""
    return start_consumer(context, settings, record_notification)
