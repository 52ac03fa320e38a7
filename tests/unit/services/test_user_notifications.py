"""What a notification says, and which events cannot make one."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.app import build_routes
from gateway.settings import GatewaySettings
from gateway.upstream import StaticChannelFactory
from services.common.messaging.consumer import Malformed
from services.common.values import money
from services.user.notifications import notification_text, record_notification
from shop.order.v1 import events_pb2, order_pb2


def event(kind: int, **order: Any) -> events_pb2.OrderEvent:
    fields = {"order_id": "ord-1", "user_id": "usr-1", "total": money(4305, "EUR")}
    fields.update(order)
    return events_pb2.OrderEvent(event_id="evt-1", kind=kind, order=order_pb2.Order(**fields))  # type: ignore[arg-type]


def test_texts_name_the_order_its_amount_and_a_cancellation_reason() -> None:
    created = notification_text(event(events_pb2.ORDER_EVENT_KIND_CREATED))
    confirmed = notification_text(event(events_pb2.ORDER_EVENT_KIND_CONFIRMED))
    cancelled = notification_text(
        event(events_pb2.ORDER_EVENT_KIND_CANCELLED, status_reason="payment declined")
    )
    assert "ord-1" in created and "43.05 EUR" in created
    assert "confirmed" in confirmed and "43.05 EUR" in confirmed
    assert cancelled.endswith("cancelled: payment declined")
    assert "amount unknown" in notification_text(
        event(events_pb2.ORDER_EVENT_KIND_CREATED, total=money(1, "x"))
    )


@pytest.mark.parametrize(
    "bad",
    [event(events_pb2.ORDER_EVENT_KIND_UNSPECIFIED), event(events_pb2.ORDER_EVENT_KIND_CREATED, user_id="")],
)
def test_an_event_without_a_kind_or_a_customer_is_malformed(bad: events_pb2.OrderEvent) -> None:
    with pytest.raises(Malformed):
        record_notification(None, bad)  # type: ignore[arg-type]


def test_the_gateway_routes_get_notifications_to_the_user_service_behind_a_token() -> None:
    routes = build_routes(GatewaySettings(), StaticChannelFactory({}))
    [route] = [r for r in routes if r.binding.rpc == "shop.user.v1.UserService.ListNotifications"]
    assert (route.binding.http_method, route.binding.template.source) == ("GET", "/v1/notifications")
    assert route.upstream == "user" and not route.public
