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
backoff until the database answers (or the consumer stops), logging the outage once. Nothing new
is taken meanwhile, and the broker holds at most ``prefetch`` unacked messages for it.
Any other error while processing a message (in the handler, or a bug in this module's own
decoding) is a failure of this attempt, logged at ERROR with its traceback: the
message is nacked with requeue after a short delay (growing with its delivery count), so a
poison message reaches the DLQ in ``max_attempts`` deliveries without spinning and the queue
moves on. It never closes the connection: that would return every prefetched message too and
burn their attempts for one message's bug.

Messages are applied in the order they arrived, but for one that fails (it comes back later)
or is held through a database outage (those behind it may get through first). Those already
waiting when the consumer turns to its inbox are started together: the database's group
commit applies writes in the order they were started (:meth:`Database.transact`), so their
transactions share commits and their acks leave together. Measured on a backlog on SQLite, a
consumed event cost ~490 us of CPU one at a time and ~170 us so (``bench/consumer_backlog.py``).

The connection is this module's own (no robust connection): when the broker is down or
restarts, the consumer reconnects with capped exponential backoff and jitter, logging once
per outage, and re-declares its topology (declarations are idempotent). Only broker and
network errors (:data:`~services.common.messaging.topology.BROKER_ERRORS`) are an outage; any
other exception that ends a connection is a bug, logged with its traceback, after which the
consumer reconnects with the same backoff. Every delay here is :class:`mesh.resilience.Backoff`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue
from aiormq.abc import DeliveredMessage
from google.protobuf.message import DecodeError

from mesh.errors import DependencyUnavailable
from services.common.app import ServiceContext
from services.common.database import Database, Tx
from services.common.messaging.consumer_settings import ConsumerSettings
from services.common.messaging.inbox import claim
from services.common.messaging.topology import BROKER_ERRORS, broker_address, declare_exchange
from services.common.settings import MessagingSettings
from shop.order.v1 import events_pb2

log = logging.getLogger(__name__)

EVENT_TYPE = "shop.order.v1.OrderEvent"
CONTENT_TYPE = "application/x-protobuf"

EventHandler = Callable[[Tx, events_pb2.OrderEvent], None]
"""Applies one event's effect inside the consumer's transaction (synchronous, on a DB thread)."""


class Malformed(Exception):
    """The message is not an event this consumer can ever apply: dead-letter it at once."""


def start_consumer(
    context: ServiceContext, settings: ConsumerSettings, handler: EventHandler
) -> EventConsumer | None:
    """Start a consumer in a service process when the bus is on; it stops with the process.

    Off (``SHOP_AMQP_URL=none``) nothing is consumed: the events wait in their queue, if it
    exists, or were never routed to it.
    """
    messaging = context.settings.messaging
    if not messaging.enabled:
        return None
    consumer = EventConsumer(messaging, context.database, settings, handler)
    consumer.start()
    context.resources.push_async_callback(consumer.close)
    return consumer


def dead_letter_queue(queue: str) -> str:
    """The DLQ of a consumer's queue."""
    return f"{queue}.dlq"


def decode_order_event(message: DeliveredMessage) -> tuple[str, events_pb2.OrderEvent]:
    """The message id and the OrderEvent of a delivery; :class:`Malformed` when it is not one."""
    properties = message.header.properties
    if properties.message_type and properties.message_type != EVENT_TYPE:
        raise Malformed(f"type {properties.message_type!r} is not {EVENT_TYPE}")
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
    message_id = properties.message_id or event.event_id
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
        self._reconnect = settings.reconnect_backoff
        self._unavailable = settings.unavailable_backoff
        self._failure = settings.failure_backoff
        self._task: asyncio.Task[None] | None = None
        self._broker = f"RabbitMQ at {broker_address(messaging.amqp_url)}"
        self._database_down = False  # an outage is being held through (logged once)
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
            except BROKER_ERRORS as error:  # refused, reset, timeout, auth: all mean "not now"
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
                await asyncio.sleep(self._reconnect.delay(failures - 1))
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
            except BROKER_ERRORS as error:
                failures += 1
                if failures == 1:
                    log.warning(
                        "consumer lost the broker; reconnecting",
                        extra={"broker": self._broker, "queue": self.queue_name, "error": repr(error)},
                    )
            except Exception:  # a bug in this process, not the broker: say so, then start over
                failures += 1
                log.exception(
                    "consumer failed on an unexpected error; reconnecting", extra={"queue": self.queue_name}
                )
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(connection.close())
            await asyncio.sleep(self._reconnect.delay(failures - 1))

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
        # aiormq's deliveries, not aio_pika's IncomingMessage: building that object (every
        # property copied, the timestamp parsed) cost ~60-80 us per message, a quarter of what
        # the broker client spends on one (docs/benchmarks.md). Only the body, two properties
        # and a header are read here, and each message is settled exactly once by _process.
        inbox: asyncio.Queue[DeliveredMessage] = asyncio.Queue()
        underlay = await channel.get_underlay_channel()
        await underlay.basic_consume(queue.name, inbox.put, no_ack=False)
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

    async def _work(self, inbox: asyncio.Queue[DeliveredMessage]) -> None:
        while True:
            waiting = [await inbox.get()]
            while not inbox.empty() and len(waiting) < self._settings.prefetch:
                waiting.append(inbox.get_nowait())
            if len(waiting) == 1:
                await self._process(waiting[0])
            else:  # started in arrival order, so their writes are queued and applied in it
                await asyncio.gather(*(self._process(message) for message in waiting))

    async def _process(self, message: DeliveredMessage) -> None:
        message_id = message.header.properties.message_id or ""
        try:
            message_id, event = decode_order_event(message)
            applied = await self._apply_holding(message_id, event)
        except Malformed as error:
            await self._dead_letter(message, str(error))
            return
        except Exception:  # the handler's or this module's bug: fail this attempt only
            deliveries = _delivery_count(message) + 1
            log.exception(
                "processing a message failed; returned for another attempt",
                extra={
                    "queue": self.queue_name,
                    "message_id": message_id,
                    "delivery": deliveries,
                    "max_attempts": self._settings.max_attempts,
                },
            )
            await asyncio.sleep(self._failure.delay(deliveries - 1))
            await _settle(message.channel.basic_nack(_tag(message), requeue=True))
            return
        if applied:
            self.applied += 1
        else:
            self.duplicates += 1
        await _settle(message.channel.basic_ack(_tag(message)))

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
                if not self._database_down:  # once per outage, however many messages it holds
                    self._database_down = True
                    log.warning(
                        "database unavailable; holding the message until it answers",
                        extra={"queue": self.queue_name, "message_id": message_id, "error": str(error)},
                    )
                await asyncio.sleep(self._unavailable.delay(outage - 1))
                continue
            if outage and self._database_down:
                self._database_down = False
                log.info("database answers again", extra={"queue": self.queue_name})
            return result

    async def _dead_letter(self, message: DeliveredMessage, reason: str) -> None:
        self.dead_lettered += 1
        log.warning(
            "malformed message sent to the dead-letter queue",
            extra={
                "queue": self.queue_name,
                "message_id": message.header.properties.message_id or "",
                "reason": reason,
            },
        )
        await _settle(message.channel.basic_reject(_tag(message), requeue=False))


def _tag(message: DeliveredMessage) -> int:
    """The tag that settles a consumed message (a ``Basic.Deliver`` always carries one)."""
    return cast(int, message.delivery_tag)


def _delivery_count(message: DeliveredMessage) -> int:
    """How many times the quorum queue delivered this message before (0 the first time)."""
    value = (message.header.properties.headers or {}).get("x-delivery-count", 0)
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
