"""A RabbitMQ consumer that applies each order event exactly once, inside a service process.

Delivery is at least once, so exactly-once *effect* is built here from three rules:

- **Inbox in the same transaction.** The handler runs in one database transaction together
  with the insert of the message id into the service's ``inbox`` table
  (:mod:`services.common.messaging.inbox`); an id already there means the effect was applied,
  so the handler is skipped and the message acked.
- **Ack after commit.** The message is acked only once that transaction committed. A crash
  before the commit leaves it unacked, and the broker redelivers it; a crash between commit and
  ack redelivers it too, and the inbox skips it.
- **Dead letters counted by the broker.** The queue is a *quorum* queue with
  ``x-delivery-limit`` and a dead-letter route to ``<queue>.dlq`` (a durable classic queue).
  RabbitMQ counts every return of a message (a nack with requeue, a consumer's channel or
  process dying), so the count survives redeliveries and restarts of this process; after
  ``max_attempts`` deliveries the broker moves it to the DLQ by itself. A malformed body (not
  an ``OrderEvent``) is rejected without requeue and goes to the DLQ at once.

A *transient* failure (the service's database is unavailable) must not burn attempts: the
consumer keeps the message unacked and retries the same transaction in-process with capped
backoff until the database answers (or the consumer stops). As it processes one message at a
time, nothing else is taken meanwhile, and the broker holds at most ``prefetch`` unacked
messages for it. Any other handler error is a failure of this attempt: the message is nacked
with requeue after a short delay (growing with its delivery count), so a poison message
reaches the DLQ in ``max_attempts`` deliveries without spinning and the queue moves on.

The connection is this module's own (no robust connection): when the broker is down or
restarts, the consumer reconnects with capped exponential backoff and jitter, logging once
per outage, and re-declares its topology (declarations are idempotent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from google.protobuf.message import DecodeError

from mesh.config import env_float, env_int
from mesh.errors import ConfigError, DependencyUnavailable
from services.common.app import ServiceContext
from services.common.database import Database, Tx
from services.common.messaging.inbox import claim
from services.common.messaging.topology import broker_address, declare_exchange
from services.common.settings import MessagingSettings
from shop.order.v1 import events_pb2

log = logging.getLogger(__name__)

EVENT_TYPE = "shop.order.v1.OrderEvent"
CONTENT_TYPE = "application/x-protobuf"

EventHandler = Callable[[Tx, events_pb2.OrderEvent], None]
"""Applies one event's effect inside the consumer's transaction (synchronous, on a DB thread)."""


class Malformed(Exception):
    """The message is not an event this consumer can ever apply: dead-letter it at once."""


@dataclass(frozen=True)
class ConsumerSettings:
    """One consumer's queue and its limits."""

    name: str  # "billing", "notifications": the queue is MessagingSettings.queue(name)
    routing_keys: tuple[str, ...]
    prefetch: int = 32
    max_attempts: int = 5
    reconnect_base_seconds: float = 0.2
    reconnect_max_seconds: float = 5.0
    # Holding a message while the database is down: retry the same transaction this often.
    unavailable_base_seconds: float = 0.1
    unavailable_max_seconds: float = 2.0
    # Before nacking a failed attempt: base * 2**(deliveries-1), capped.
    failure_base_seconds: float = 0.05
    failure_max_seconds: float = 1.0
    # Fault injection for tests: each handler transaction takes this much longer (a slow
    # handler), so a test can kill the process while messages are still in flight.
    fault_delay_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.prefetch <= 1000:
            raise ConfigError(f"consumer {self.name}: prefetch must be within 1..1000, got {self.prefetch}")
        if self.max_attempts < 1:
            raise ConfigError(f"consumer {self.name}: max_attempts must be at least 1")


def consumer_settings(name: str, routing_keys: Sequence[str], extra: Mapping[str, str]) -> ConsumerSettings:
    """A consumer's settings from a service's ``extra`` (``<SERVICE>_CONSUMER_PREFETCH``...)."""
    return ConsumerSettings(
        name=name,
        routing_keys=tuple(routing_keys),
        prefetch=env_int(extra, "CONSUMER_PREFETCH", 32),
        max_attempts=env_int(extra, "CONSUMER_MAX_ATTEMPTS", 5),
        fault_delay_seconds=env_float(extra, "CONSUMER_FAULT_DELAY_SECONDS", 0.0),
    )


def start_consumer(
    context: ServiceContext, name: str, routing_keys: Sequence[str], handler: EventHandler
) -> EventConsumer | None:
    """Start consumer ``name`` in a service process when the bus is on; it stops with the process.

    Off (``SHOP_AMQP_URL=none``) nothing is consumed: the events wait in their queue, if it
    exists, or were never routed to it.
    """
    messaging = context.settings.messaging
    if not messaging.enabled:
        return None
    consumer = EventConsumer(
        messaging,
        context.database,
        consumer_settings(name, routing_keys, context.settings.extra),
        handler,
    )
    consumer.start()
    context.resources.push_async_callback(consumer.close)
    return consumer


def dead_letter_queue(queue: str) -> str:
    """The DLQ of a consumer's queue."""
    return f"{queue}.dlq"


def decode_order_event(message: AbstractIncomingMessage) -> tuple[str, events_pb2.OrderEvent]:
    """The message id and the OrderEvent of a delivery; :class:`Malformed` when it is not one."""
    if message.type and message.type != EVENT_TYPE:
        raise Malformed(f"type {message.type!r} is not {EVENT_TYPE}")
    event = events_pb2.OrderEvent()
    try:
        event.ParseFromString(message.body)
    except DecodeError as error:
        raise Malformed(f"body is not a binary OrderEvent: {error}") from None
    if (
        not event.event_id
        or not event.order.order_id
        or event.kind == events_pb2.ORDER_EVENT_KIND_UNSPECIFIED
    ):
        raise Malformed("OrderEvent without event_id, kind or order.order_id")
    message_id = message.message_id or event.event_id
    return message_id, event


async def declare_queue(
    channel: AbstractChannel, messaging: MessagingSettings, settings: ConsumerSettings
) -> AbstractQueue:
    """The consumer's quorum queue (bound to the exchange) and its DLQ; idempotent."""
    name = messaging.queue(settings.name)
    dlq = dead_letter_queue(name)
    exchange = await declare_exchange(channel, messaging)
    await channel.declare_queue(dlq, durable=True)
    queue = await channel.declare_queue(
        name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            # Returns allowed before dead-lettering: the first delivery plus (limit) more.
            "x-delivery-limit": settings.max_attempts - 1,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq,
        },
    )
    for key in settings.routing_keys:
        await queue.bind(exchange, key)
    return queue


class EventConsumer:
    """Consumes one queue as a background task of the service; :meth:`close` stops it."""

    def __init__(
        self,
        messaging: MessagingSettings,
        database: Database,
        settings: ConsumerSettings,
        handler: EventHandler,
    ) -> None:
        self._messaging = messaging
        self._db = database
        self._settings = settings
        self._handler = handler
        self._task: asyncio.Task[None] | None = None
        self._broker = f"RabbitMQ at {broker_address(messaging.amqp_url)}"
        self.applied = 0
        self.duplicates = 0
        self.dead_lettered = 0

    @property
    def queue_name(self) -> str:
        return self._messaging.queue(self._settings.name)

    def start(self) -> None:
        """Start consuming in the background (connecting when the broker is there)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"consumer-{self.queue_name}"
            )

    async def close(self) -> None:
        """Stop: unacked messages go back to the broker when the connection closes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                connection = await aio_pika.connect(self._messaging.amqp_url, timeout=10)
            except Exception as error:  # refused, reset, timeout, auth: all mean "not now"
                failures += 1
                if failures == 1:
                    log.warning(
                        "broker unavailable; consumer retrying with backoff",
                        extra={
                            "broker": self._broker,
                            "queue": self.queue_name,
                            "error": type(error).__name__,
                        },
                    )
                await asyncio.sleep(self._backoff(failures))
                continue
            try:
                if failures:
                    log.info(
                        "broker reachable again", extra={"broker": self._broker, "queue": self.queue_name}
                    )
                failures = 0
                await self._consume(connection)
                failures = 1  # the connection was lost: an outage starts, logged here once
                log.warning(
                    "connection to the broker lost; consumer reconnecting",
                    extra={"broker": self._broker, "queue": self.queue_name},
                )
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                if failures == 1:
                    log.warning(
                        "consumer lost the broker; reconnecting",
                        extra={"broker": self._broker, "queue": self.queue_name, "error": repr(error)},
                    )
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(connection.close())
            await asyncio.sleep(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        """Capped exponential backoff with full jitter."""
        ceiling = min(
            self._settings.reconnect_max_seconds,
            self._settings.reconnect_base_seconds * 2 ** min(failures, 16),
        )
        return random.uniform(ceiling / 2, ceiling)

    async def _consume(self, connection: aio_pika.abc.AbstractConnection) -> None:
        """Serve one connection until it closes; messages are handled one at a time."""
        lost = asyncio.get_running_loop().create_future()

        def on_close(*_: Any) -> None:
            if not lost.done():
                lost.set_result(None)

        connection.close_callbacks.add(on_close)
        channel = await connection.channel()
        channel.close_callbacks.add(on_close)
        await channel.set_qos(prefetch_count=self._settings.prefetch)
        queue = await declare_queue(channel, self._messaging, self._settings)
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        await queue.consume(inbox.put, no_ack=False)
        log.info(
            "consuming",
            extra={
                "queue": self.queue_name,
                "keys": list(self._settings.routing_keys),
                "broker": self._broker,
            },
        )
        worker = asyncio.get_running_loop().create_task(self._work(inbox))
        try:
            await asyncio.wait({worker, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        if worker.done() and not worker.cancelled() and worker.exception() is not None:
            raise worker.exception()  # type: ignore[misc]

    async def _work(self, inbox: asyncio.Queue[AbstractIncomingMessage]) -> None:
        while True:
            message = await inbox.get()
            await self._process(message)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        try:
            message_id, event = decode_order_event(message)
        except Malformed as error:
            await self._dead_letter(message, str(error))
            return
        try:
            applied = await self._apply_holding(message_id, event)
        except Malformed as error:
            await self._dead_letter(message, str(error))
            return
        except Exception as error:
            deliveries = _delivery_count(message) + 1
            log.warning(
                "handler failed; message returned for another attempt",
                extra={
                    "queue": self.queue_name,
                    "message_id": message_id,
                    "delivery": deliveries,
                    "max_attempts": self._settings.max_attempts,
                    "error": repr(error),
                },
            )
            delay = self._settings.failure_base_seconds * 2 ** min(deliveries - 1, 16)
            await asyncio.sleep(min(delay, self._settings.failure_max_seconds))
            await _settle(message.nack(requeue=True))
            return
        if applied:
            self.applied += 1
        else:
            self.duplicates += 1
        await _settle(message.ack())

    async def _apply_holding(self, message_id: str, event: events_pb2.OrderEvent) -> bool:
        """Apply in one transaction with the inbox claim; while the database is down, wait."""
        consumer = self._settings.name
        handler = self._handler
        delay = self._settings.fault_delay_seconds

        def work(tx: Tx) -> bool:
            if not claim(tx, consumer, message_id):
                return False
            if delay:
                time.sleep(delay)  # on the database thread, inside the transaction: a slow handler
            handler(tx, event)
            return True

        outage = 0
        while True:
            try:
                result = await self._db.transact(work)
            except DependencyUnavailable as error:
                outage += 1
                if outage == 1:
                    log.warning(
                        "database unavailable; holding the message until it answers",
                        extra={"queue": self.queue_name, "message_id": message_id, "error": str(error)},
                    )
                ceiling = min(
                    self._settings.unavailable_max_seconds,
                    self._settings.unavailable_base_seconds * 2 ** min(outage, 16),
                )
                await asyncio.sleep(random.uniform(ceiling / 2, ceiling))
                continue
            if outage:
                log.info("database answers again", extra={"queue": self.queue_name})
            return result

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        self.dead_lettered += 1
        log.warning(
            "malformed message sent to the dead-letter queue",
            extra={"queue": self.queue_name, "message_id": message.message_id or "", "reason": reason},
        )
        await _settle(message.reject(requeue=False))


def _delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times the quorum queue delivered this message before (0 the first time)."""
    value = (message.headers or {}).get("x-delivery-count", 0)
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


async def _settle(outcome: Any) -> None:
    """Ack/nack/reject; if the channel is gone the broker redelivers, and the inbox dedupes."""
    try:
        await outcome
    except Exception as error:
        log.info("could not settle a message (the broker will redeliver it)", extra={"error": repr(error)})
