"""The machine's RabbitMQ for tests: one namespace per shop or test, deleted afterwards.

A namespace names the exchange (``<ns>.events``) and every consumer queue (``<ns>.billing``
and its ``<ns>.billing.dlq``...), so tests sharing the broker never hear each other. The broker
has no management plugin, so teardown deletes the names it knows: the exchange and the queues
(and DLQs) of the consumers the namespace was made for.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import aio_pika

from services.common.messaging.consumer import CONTENT_TYPE, EVENT_TYPE, dead_letter_queue
from services.common.settings import MessagingSettings
from shop.order.v1 import events_pb2

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
CONSUMERS = ("billing", "notifications")
ROUTING_KEYS = {
    events_pb2.ORDER_EVENT_KIND_CREATED: "order.created",
    events_pb2.ORDER_EVENT_KIND_CONFIRMED: "order.confirmed",
    events_pb2.ORDER_EVENT_KIND_CANCELLED: "order.cancelled",
}


@dataclass(frozen=True)
class Bus:
    """One test namespace on the machine's broker."""

    namespace: str
    consumers: tuple[str, ...] = CONSUMERS

    @property
    def settings(self) -> MessagingSettings:
        return MessagingSettings(amqp_url=AMQP_URL, namespace=self.namespace)

    def env(self) -> dict[str, str]:
        """The environment that puts a service process on this namespace."""
        return {"SHOP_AMQP_URL": AMQP_URL, "SHOP_EVENTS_NAMESPACE": self.namespace}

    def queues(self) -> list[str]:
        names = [self.settings.queue(c) for c in self.consumers]
        return [*names, *(dead_letter_queue(n) for n in names)]

    def queue(self, consumer: str) -> str:
        return self.settings.queue(consumer)

    def dlq(self, consumer: str) -> str:
        return dead_letter_queue(self.settings.queue(consumer))

    def publish(self, events: Iterable[events_pb2.OrderEvent], body: bytes | None = None) -> None:
        """Publish events as the relay does (persistent, confirmed); ``body`` overrides for junk."""
        asyncio.run(self._publish(list(events), body))

    def publish_raw(self, routing_key: str, body: bytes, message_id: str) -> None:
        """Publish an arbitrary body (a malformed message) with the event properties."""
        asyncio.run(self._publish_raw(routing_key, body, message_id))

    def depth(self, queue: str) -> int:
        """Ready messages in a queue (0 when it does not exist)."""
        return asyncio.run(self._counts(queue))[0]

    def wait_depth(self, queue: str, expected: int, timeout: float = 30.0) -> int:
        """Poll a queue's depth until it equals ``expected`` or the deadline; returns the last."""
        deadline = time.monotonic() + timeout
        depth = self.depth(queue)
        while depth != expected and time.monotonic() < deadline:
            time.sleep(0.1)
            depth = self.depth(queue)
        return depth

    def consumers_of(self, queue: str) -> int:
        """Consumers attached to a queue (0 when it does not exist yet)."""
        return asyncio.run(self._counts(queue))[1]

    def wait_consumer(self, consumer: str, timeout: float = 30.0) -> None:
        """Poll until ``consumer``'s queue exists with a consumer on it (publishing earlier is lost)."""
        deadline = time.monotonic() + timeout
        while self.consumers_of(self.queue(consumer)) == 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"no consumer on {self.queue(consumer)} within {timeout} s")
            time.sleep(0.05)

    def delete(self) -> None:
        """Delete the namespace's exchange, queues and DLQs (idempotent)."""
        asyncio.run(self._delete())

    async def _publish(self, events: list[events_pb2.OrderEvent], body: bytes | None) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(
                self.settings.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            for event in events:
                await exchange.publish(
                    _message(event.SerializeToString(), event.event_id), ROUTING_KEYS[event.kind]
                )

    async def _publish_raw(self, routing_key: str, body: bytes, message_id: str) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(
                self.settings.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            await exchange.publish(_message(body, message_id), routing_key)

    async def _counts(self, queue: str) -> tuple[int, int]:
        """(ready messages, consumers) of a queue; (0, 0) when it does not exist."""
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return 0, 0
            result = declared.declaration_result
            return int(result.message_count or 0), int(result.consumer_count or 0)

    async def _delete(self) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            for queue in self.queues():
                await channel.queue_delete(queue)
            await channel.exchange_delete(self.settings.exchange)


def _message(body: bytes, message_id: str) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        message_id=message_id,
        type=EVENT_TYPE,
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


def new_bus(consumers: tuple[str, ...] = CONSUMERS) -> Bus:
    return Bus(f"t-{uuid.uuid4().hex[:12]}", consumers)


@contextmanager
def bus_namespace(consumers: tuple[str, ...] = CONSUMERS) -> Iterator[Bus]:
    """A fresh namespace, deleted from the broker afterwards."""
    bus = new_bus(consumers)
    try:
        yield bus
    finally:
        bus.delete()
