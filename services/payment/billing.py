"""Billing: the payment service's consumer of ``order.confirmed`` events, which issues invoices.

An invoice is issued when an order is *confirmed* (paid, stock committed, shipment scheduled),
not when its payment is captured: capture is one step of the saga and may still be followed by
a cancellation, while the confirmed event is the order's final word. The consumer
(:mod:`services.common.messaging.consumer`) runs :func:`issue_invoice` in one transaction with
its inbox claim, so an event redelivered after a crash adds nothing; ``UNIQUE (order_id)`` on
invoices backs that up should an order ever be confirmed by two different events.

The invoice is built from the event's order snapshot alone (total, user, payment_id); it does
not need the payment row, so billing never waits on, nor fails for, the order of writes across
services.
"""

from __future__ import annotations

from services.common.app import ServiceContext
from services.common.database import Tx
from services.common.errors import InvalidArgument
from services.common.messaging.consumer import EventConsumer, Malformed, start_consumer
from services.common.messaging.consumer_settings import ConsumerSettings
from services.common.values import minor_units, new_id, utc_now
from shop.order.v1 import events_pb2

CONSUMER = "billing"
ROUTING_KEYS = ("order.confirmed",)


def issue_invoice(tx: Tx, event: events_pb2.OrderEvent) -> None:
    """The order's one invoice, for its total; nothing for any event but a confirmation."""
    if event.kind != events_pb2.ORDER_EVENT_KIND_CONFIRMED:
        return
    order = event.order
    try:
        amount = minor_units(order.total, "order.total")
    except InvalidArgument as error:
        raise Malformed(str(error)) from None
    if not order.user_id or not order.payment_id or amount <= 0:
        raise Malformed("a confirmed order needs user_id, payment_id and a positive total")
    tx.execute(
        "INSERT INTO invoices (invoice_id, payment_id, order_id, user_id, amount_minor, currency, create_time) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (order_id) DO NOTHING",
        (
            new_id("inv"),
            order.payment_id,
            order.order_id,
            order.user_id,
            amount,
            order.total.currency_code,
            utc_now(),
        ),
    )


def start_billing(context: ServiceContext, settings: ConsumerSettings) -> EventConsumer | None:
    """Start the billing consumer when the bus is on; it stops with the process's resources."""
    return start_consumer(context, settings, issue_invoice)
