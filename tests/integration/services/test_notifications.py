"""The user service's notification consumer, as a real process on the machine's RabbitMQ.

Order events are published straight to the namespace's exchange, the way the order service's
relay publishes them; what the consumer recorded is read back through ListNotifications (the
caller sees only their own) and counted in the user database (one row per event id).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from services.common.values import money
from shop.order.v1 import events_pb2, order_pb2
from shop.user.v1 import user_pb2 as pb
from shop.user.v1 import user_pb2_grpc
from tests.conftest import StartService
from tests.support.bus import Bus, bus_namespace
from tests.support.invariants import rows
from tests.support.tokens import KeyPair

Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
def bus() -> Iterator[Bus]:
    with bus_namespace(("notifications",)) as namespace:
        yield namespace


def order_event(kind: int, user_id: str, order_id: str, reason: str = "") -> events_pb2.OrderEvent:
    order = order_pb2.Order(
        order_id=order_id, user_id=user_id, total=money(4300, "EUR"), payment_id=f"pay-{order_id}"
    )
    order.status_reason = reason
    return events_pb2.OrderEvent(event_id=f"evt_{uuid.uuid4().hex}", kind=kind, order=order)  # type: ignore[arg-type]


async def all_notifications(
    stub: user_pb2_grpc.UserServiceStub, metadata: Metadata, page_size: int = 2
) -> list[pb.Notification]:
    """Every page of the caller's notifications."""
    found: list[pb.Notification] = []
    token = ""
    while True:
        page = await stub.ListNotifications(
            pb.ListNotificationsRequest(page_size=page_size, page_token=token), metadata=metadata
        )
        found += page.notifications
        token = page.next_page_token
        if not token:
            return found


async def notifications_when(
    stub: user_pb2_grpc.UserServiceStub, metadata: Metadata, count: int, within: float = 30.0
) -> list[pb.Notification]:
    """Polled until the caller has ``count`` notifications (the consumer is asynchronous)."""
    deadline = time.monotonic() + within
    while True:
        found = await all_notifications(stub, metadata)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def test_each_customer_sees_their_own_notifications_once_per_event(
    start_service: StartService, jwt_keys: KeyPair, bus: Bus, tmp_path: Path
) -> None:
    service = start_service("user", **bus.env())
    ada, bob = jwt_keys.metadata("usr-ada"), jwt_keys.metadata("usr-bob")
    admin = jwt_keys.metadata("admin-1", ("admin",))
    ada_events = [
        order_event(events_pb2.ORDER_EVENT_KIND_CREATED, "usr-ada", "ord-1"),
        order_event(events_pb2.ORDER_EVENT_KIND_CONFIRMED, "usr-ada", "ord-1"),
        order_event(events_pb2.ORDER_EVENT_KIND_CREATED, "usr-ada", "ord-2"),
        order_event(events_pb2.ORDER_EVENT_KIND_CANCELLED, "usr-ada", "ord-2", reason="out of stock"),
    ]
    bob_events = [order_event(events_pb2.ORDER_EVENT_KIND_CREATED, "usr-bob", "ord-3")]
    await asyncio.to_thread(bus.wait_consumer, "notifications")
    # Every event twice (a redelivery, a relay's re-send): one notification each all the same.
    await asyncio.to_thread(bus.publish, [*ada_events, *bob_events, *ada_events, *bob_events])
    # Handled in order, one at a time: once this last one shows, every earlier delivery settled.
    sentinel = order_event(events_pb2.ORDER_EVENT_KIND_CREATED, "usr-eve", "ord-last")
    await asyncio.to_thread(bus.publish, [sentinel])

    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = user_pb2_grpc.UserServiceStub(channel)
        mine = await notifications_when(stub, ada, len(ada_events))
        theirs = await notifications_when(stub, bob, len(bob_events))
        assert len(await notifications_when(stub, jwt_keys.metadata("usr-eve"), 1)) == 1
        assert {n.event_id for n in mine} == {e.event_id for e in ada_events}
        assert {n.user_id for n in mine} == {"usr-ada"}
        assert [n.event_id for n in theirs] == [bob_events[0].event_id]
        kinds = {n.order_id + ":" + pb.NotificationKind.Name(n.kind) for n in mine}
        assert kinds == {
            "ord-1:NOTIFICATION_KIND_ORDER_CREATED",
            "ord-1:NOTIFICATION_KIND_ORDER_CONFIRMED",
            "ord-2:NOTIFICATION_KIND_ORDER_CREATED",
            "ord-2:NOTIFICATION_KIND_ORDER_CANCELLED",
        }
        cancelled = next(n for n in mine if n.kind == pb.NOTIFICATION_KIND_ORDER_CANCELLED)
        assert "out of stock" in cancelled.text
        confirmed = next(n for n in mine if n.kind == pb.NOTIFICATION_KIND_ORDER_CONFIRMED)
        assert "43.00 EUR" in confirmed.text
        times = [n.create_time.ToDatetime() for n in mine]
        assert times == sorted(times, reverse=True)  # newest first, across pages of two
        # Own only: an admin has none of the customers' notifications.
        assert not (await stub.ListNotifications(pb.ListNotificationsRequest(), metadata=admin)).notifications
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.ListNotifications(pb.ListNotificationsRequest())
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as forged:
            await stub.ListNotifications(pb.ListNotificationsRequest(page_token="not-ours"), metadata=ada)
        assert forged.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    database = str(tmp_path / "data" / "user.sqlite3")
    per_event = Counter(
        r["event_id"] for r in await rows(database, "user", "SELECT event_id FROM notifications")
    )
    assert sorted(per_event.values()) == [1] * (len(ada_events) + len(bob_events) + 1)
    assert await asyncio.to_thread(bus.depth, bus.dlq("notifications")) == 0
