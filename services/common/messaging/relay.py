"""The outbox relay: publishes a service's committed events to RabbitMQ, in order, at least once.

It runs as a background task inside the service process. Each round it claims a batch of
unsent outbox rows (oldest ``seq`` first, see :mod:`services.common.messaging.outbox`),
publishes them one after the other on a channel with publisher confirms, and marks a row sent
only once the broker has confirmed it; the transaction that marks a batch sent also claims the
next one, so a busy relay writes once per round. A crash or a lost connection between the
confirm and the mark publishes that row again later: delivery is at least once, consumers
deduplicate by ``message_id`` (the event id). Nothing is ever skipped: rows are found by
``sent_time IS NULL``, not by a cursor.

Messages are persistent, carry ``message_id`` = event id, ``type``, ``content_type`` and a
timestamp (the event's commit time), and are published ``mandatory``. A message the broker
confirms but returns as unroutable (no queue bound for its routing key) is marked sent anyway
and logged: the broker accepted it and nobody is listening; consumers declare their durable
queues at their start, so an event published before any consumer existed has no audience.

The broker may be absent at start or go away at any time: the relay reconnects with the
project's jittered exponential backoff (:class:`mesh.resilience.Backoff`), logs once per
outage (address only, never credentials) how many events wait in the outbox, and once per
recovery. Only a broker or network error (:data:`~services.common.messaging.topology.BROKER_ERRORS`)
is an outage; the outbox's database being away is reported as such. Any other exception is a
bug in this process and is logged with its traceback, never as "RabbitMQ unavailable"; the
relay then starts a new session after the same backoff, so it neither spins nor dies.

A row that cannot be relayed because of such a bug (building its message or publishing it
raised something other than a broker error) is *parked*: logged once at ERROR with its
traceback and event id, left unsent in the outbox, and skipped by this relay from then on, so
one bad event does not block the events after it. Parking is in memory on purpose: the bug is
in the code, so retrying the row on every poll would fail the same way, while the next process
(a restart, the deploy with the fix) takes it up again. Until then the row counts in
``shop_outbox_pending``, its ``attempts`` column says how many relays took it, and the events
after it are published ahead of it: the price of not stopping the whole outbox for one row.

It waits ``poll_seconds`` between rounds when idle, and :meth:`OutboxRelay.wake` (called
after a local commit wrote an event) cuts the wait short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aiormq.exceptions
from aio_pika.connection import Connection, make_url
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic
from prometheus_client import CollectorRegistry, Gauge, Histogram

from mesh.config import env_float
from mesh.errors import ConfigError, DependencyUnavailable
from mesh.resilience import Backoff
from services.common.database import Database, Tx
from services.common.messaging import outbox
from services.common.messaging.outbox import OutboxMessage
from services.common.messaging.topology import BROKER_ERRORS, broker_address, declare_exchange
from services.common.settings import MessagingSettings
from services.common.values import utc_now

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-protobuf"  # every outbox payload is a binary protobuf message
PERSISTENT = 2  # delivery mode: the broker writes the message to disk before it confirms it
# What ends a session as an outage; anything else that ends one is a bug (module doc).
OUTAGES: tuple[type[Exception], ...] = (DependencyUnavailable, *BROKER_ERRORS)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


@dataclass(frozen=True)
class RelaySettings:
    """How eagerly the relay polls, how big its batches are and how it backs off."""

    batch_size: int = 100
    # Local commits wake the relay at once; the poll only finds rows other instances wrote (or
    # left behind). Not faster: each poll is a (short) write transaction on SQLite.
    poll_seconds: float = 0.1
    # How long a claimed batch is this relay's alone: another instance takes over a dead
    # relay's rows after it. Renewed every third of it while the broker's confirms are awaited,
    # so a slow broker does not hand a live relay's rows to a second one (_holding_claim).
    claim_seconds: float = 10.0
    backoff_base_seconds: float = 0.1
    backoff_max_seconds: float = 5.0
    connect_timeout_seconds: float = 5.0
    publish_timeout_seconds: float = 10.0
    # How often the pending gauge is refreshed while idle (a COUNT over the unsent index).
    gauge_interval_seconds: float = 1.0

    def __post_init__(self) -> None:
        # Not infinite either: a dead relay's claim must lapse, or its events never leave.
        if not (math.isfinite(self.claim_seconds) and self.claim_seconds > 0):
            raise ConfigError(
                f"ORDER_OUTBOX_CLAIM_SECONDS must be a finite number > 0, got {self.claim_seconds}"
            )


def relay_settings_from_env(environ: Mapping[str, str]) -> RelaySettings:
    """``ORDER_OUTBOX_CLAIM_SECONDS``: how soon another instance takes over a dead relay's events."""
    return RelaySettings(
        claim_seconds=env_float(environ, "ORDER_OUTBOX_CLAIM_SECONDS", RelaySettings.claim_seconds)
    )


class RelayMetrics:
    """``shop_outbox_pending`` and ``shop_outbox_relay_lag_seconds`` in the process's registry."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.pending: Gauge | None = None
        self.lag: Histogram | None = None
        if registry is not None:
            self.pending = Gauge(
                "shop_outbox_pending",
                "Events in the outbox not yet confirmed by the broker",
                registry=registry,
            )
            self.lag = Histogram(
                "shop_outbox_relay_lag_seconds",
                "From an event's commit to the broker's confirm of its publication",
                buckets=LAG_BUCKETS,
                registry=registry,
            )


class TransportErrorFilter(logging.Filter):
    """Drops aiormq's per-attempt "error when creating transport" record.

    aiormq logs it at ERROR on every failed connect; during an outage that is one line per
    retry. The relay reports an outage itself, once, with what matters (address, backlog).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error when creating transport")


def quiet_transport_errors() -> None:
    """Install :class:`TransportErrorFilter` on aiormq's connection logger (once per process)."""
    logger = logging.getLogger("aiormq.connection")
    if not any(isinstance(f, TransportErrorFilter) for f in logger.filters):
        logger.addFilter(TransportErrorFilter())


def properties_of(row: OutboxMessage) -> Basic.Properties:
    """The AMQP properties of an outbox row's message (see shop/order/v1/events.proto for the
    contract; the body is the row's payload). The same properties aio_pika's ``Message`` sent,
    built directly: its object cost ~35 us per publication (docs/benchmarks.md)."""
    return Basic.Properties(
        content_type=CONTENT_TYPE,
        delivery_mode=PERSISTENT,
        headers={},
        message_id=row.event_id,
        message_type=row.message_type,
        priority=0,
        timestamp=datetime.fromisoformat(row.create_time),
    )


def lag_seconds(row: OutboxMessage, now: datetime) -> float:
    return max(0.0, (now - datetime.fromisoformat(row.create_time)).total_seconds())


class OutboxRelay:
    """One per process that owns an outbox. :meth:`start` it; :meth:`close` it at shutdown."""

    def __init__(
        self,
        database: Database,
        messaging: MessagingSettings,
        settings: RelaySettings | None = None,
        *,
        registry: CollectorRegistry | None = None,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = database
        self._messaging = messaging
        self._settings = settings or RelaySettings()
        self._metrics = RelayMetrics(registry)
        self._owner = owner or f"relay-{uuid.uuid4().hex[:12]}"
        self._clock = clock
        self._address = broker_address(messaging.amqp_url)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(
            initial=self._settings.backoff_base_seconds, maximum=self._settings.backoff_max_seconds
        )
        self._failures = 0
        self._parked: set[int] = set()  # seqs of rows a bug kept from being relayed (module doc)
        self._outage = False
        self._database_down = False
        self._gauge_time = 0.0
        self._unrouted_logged = False
        self.published = 0  # confirmed publications since start (diagnostics and tests)
        self.connect_failures = 0  # sessions ended by the broker or the database (outages)
        self.errors = 0  # sessions ended by a bug (an exception that is neither)
        self.connected = asyncio.Event()  # set while a broker connection is up

    def start(self) -> None:
        quiet_transport_errors()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self._messaging.exchange}")

    def wake(self) -> None:
        """A local commit wrote an event: look now instead of at the next poll."""
        self._wakeup.set()

    async def close(self) -> None:
        """Stop publishing; rows in flight stay unsent (and go out at the next start)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self._db.transact(lambda tx: outbox.release(tx, self._owner))

    @property
    def parked(self) -> frozenset[int]:
        """Seqs of the rows this relay skips because relaying them hit a bug (module doc)."""
        return frozenset(self._parked)

    async def _run(self) -> None:
        while True:
            try:
                await self._session()
            except OUTAGES as error:  # the broker or the outbox's database: reconnect
                self.connect_failures += 1
                await self._after_failure(error)
            except Exception:  # a bug: say so, with the traceback; the broker may be fine
                self.errors += 1
                log.exception("outbox relay session failed on an unexpected error; starting a new one")
            self.connected.clear()
            self._failures += 1
            # Jittered, so instances that lost the broker together do not reconnect in step.
            await asyncio.sleep(self._backoff.delay(self._failures - 1))

    async def _after_failure(self, error: Exception) -> None:
        if isinstance(error, DependencyUnavailable):  # the outbox's own database, not the broker
            level = logging.DEBUG if self._database_down else logging.WARNING
            self._database_down = True
            log.log(level, "outbox relay paused: %s", error, extra={"error": type(error).__name__})
            return
        # Claims held by a relay that cannot publish would only delay another instance.
        waiting: int | str = "?"
        try:
            await self._db.transact(lambda tx: outbox.release(tx, self._owner))
            waiting = await self._db.transact(outbox.pending)
            self._set_pending(int(waiting))
        except Exception:  # the database may be down too; the broker is what we report here
            log.debug("outbox not readable after a broker failure", exc_info=True)
        if not self._outage:
            self._outage = True
            log.warning(
                "RabbitMQ at %s unavailable; %s events waiting in the outbox",
                self._address,
                waiting,
                extra={"broker": self._address, "error": type(error).__name__, "pending": waiting},
            )
        else:
            log.debug("RabbitMQ at %s still unavailable: %s", self._address, type(error).__name__)

    async def _session(self) -> None:
        """One broker connection: publish until something fails (then the caller reconnects)."""
        s = self._settings
        # aio_pika.connect() would drop a half-open connection on failure (closed later by its
        # finalizer, with a warning); built by hand it is closed here, every time.
        connection = Connection(make_url(self._messaging.amqp_url))
        try:
            await connection.connect(timeout=s.connect_timeout_seconds)
            # Bounded like the connect: a broker that accepts but never answers is an outage too.
            channel = await asyncio.wait_for(
                connection.channel(publisher_confirms=True, on_return_raises=True), s.connect_timeout_seconds
            )
            await asyncio.wait_for(declare_exchange(channel, self._messaging), s.connect_timeout_seconds)
            underlay = await channel.get_underlay_channel()
            self.connected.set()
            if self._outage:
                self._outage = False
                log.info("RabbitMQ at %s reachable again; relaying the outbox", self._address)
            else:
                log.info("outbox relay connected to RabbitMQ at %s", self._address)
            rows: list[OutboxMessage] = []
            while True:
                if connection.is_closed or channel.is_closed:
                    raise ConnectionError(f"connection to RabbitMQ at {self._address} closed")
                rows = await (self._relay_batch(underlay, rows) if rows else self._take([]))
                # Reset only after a whole round: a session that fails right after connecting
                # (a bug, a flapping broker) keeps backing off further instead of spinning.
                self._failures = 0
                self._database_down = False
                if not rows:
                    await self._idle()
        finally:
            self.connected.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=2.0)

    async def _idle(self) -> None:
        now = self._clock()
        if (
            self._metrics.pending is not None
            and now - self._gauge_time >= self._settings.gauge_interval_seconds
        ):
            self._set_pending(await self._db.transact(outbox.pending))
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps the wait in a task of its
        # own, and a busy relay goes idle between most of its rounds.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.poll_seconds):
                await self._wakeup.wait()
        self._wakeup.clear()

    def _set_pending(self, count: int) -> None:
        self._gauge_time = self._clock()
        if self._metrics.pending is not None:
            self._metrics.pending.set(count)

    async def _take(self, confirmed: list[int], *, claim: bool = True) -> list[OutboxMessage]:
        """Record the ``confirmed`` rows as sent and claim the next batch, in one transaction.

        One write per round instead of a mark and then a claim: on a busy service each round
        is a write transaction of its own (on SQLite with its fsync), and the relay's rounds
        were about as many as the saga's own writes. Without ``claim`` it only records.
        """
        s = self._settings
        if claim:
            self._wakeup.clear()  # before the claim: a commit after it wakes the next idle wait
        parked = tuple(self._parked)
        sent_time = utc_now()

        def work(tx: Tx) -> list[OutboxMessage]:
            if confirmed:
                outbox.mark_sent(tx, confirmed, sent_time)
            if not claim:
                return []
            return outbox.claim(tx, self._owner, self._clock(), s.claim_seconds, s.batch_size, parked)

        rows = await self._db.transact(work)
        self.published += len(confirmed)
        return rows

    async def _relay_batch(self, channel: AbstractChannel, rows: list[OutboxMessage]) -> list[OutboxMessage]:
        """Publish one claimed batch; the next batch, claimed as this one is recorded."""
        # The whole batch goes out at once on the confirming channel (frames leave in claim
        # order) and its confirms are awaited together: one round trip per batch, not per row,
        # so a busy order process does not fall behind by a broker round trip per event.
        publishing = asyncio.gather(*(self._publish(channel, row) for row in rows), return_exceptions=True)
        results = await self._holding_claim(publishing)
        confirmed = [row.seq for row, result in zip(rows, results, strict=True) if result is None]
        stop: BaseException | None = None  # the broker failed, or this task is being cancelled
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BROKER_ERRORS):
                stop = stop or result
            elif isinstance(result, Exception):
                self._park(row, result)  # before the next claim, which must skip it
            elif isinstance(result, BaseException):  # cancelled: stop now
                stop = result
        # Rows confirmed before a failure are recorded even when others failed (those stay
        # unsent and go out again: at least once, consumers deduplicate by event_id).
        following = await self._take(confirmed, claim=stop is None) if confirmed or stop is None else []
        if stop is not None:
            raise stop
        s = self._settings
        if self._metrics.pending is not None and self._clock() - self._gauge_time >= s.gauge_interval_seconds:
            self._set_pending(await self._db.transact(outbox.pending))
        return following

    async def _holding_claim(self, publishing: asyncio.Future[list[Any]]) -> list[Any]:
        """The batch's results once the broker confirmed it; the claim is renewed meanwhile.

        A claim must outlive the round that holds it, and a round waits for confirms up to
        ``publish_timeout_seconds``. Renewed every third of its length while it waits, the
        claim stays short (a dead relay's rows are taken over soon) without a slow broker
        letting a second relay publish the same rows again, out of order. Anything that ends
        the wait (a cancellation, the database down for the renewal) ends the batch too.
        """
        s = self._settings
        try:
            while True:
                done, _ = await asyncio.wait({publishing}, timeout=s.claim_seconds / 3)
                if done:
                    return publishing.result()
                await self._db.transact(
                    partial(outbox.renew, owner=self._owner, until=self._clock() + s.claim_seconds)
                )
        except BaseException:
            publishing.cancel()
            raise

    def _park(self, row: OutboxMessage, error: Exception) -> None:
        """Skip a row a bug keeps from being relayed; logged once, with the traceback."""
        self._parked.add(row.seq)
        log.error(
            "event %s (%s) cannot be relayed: a bug, not the broker; left unsent and skipped "
            "until the next start",
            row.event_id,
            row.routing_key,
            exc_info=error,
            extra={"event_id": row.event_id, "routing_key": row.routing_key, "seq": row.seq},
        )

    async def _publish(self, channel: AbstractChannel, row: OutboxMessage) -> None:
        """Returns once the broker confirmed the message; raises when it did not.

        ``channel`` is the confirming channel (aiormq's, under aio_pika's): a nack raises
        ``DeliveryError`` and, opened with ``on_return_raises``, a returned message ``PublishError``.
        """
        properties = properties_of(row)  # before the try: a row that does not build is not "unrouted"
        try:
            await channel.basic_publish(
                row.payload,
                exchange=self._messaging.exchange,
                routing_key=row.routing_key,
                properties=properties,
                mandatory=True,
                timeout=self._settings.publish_timeout_seconds,
            )
        except aiormq.exceptions.PublishError:
            # Confirmed but returned: no queue is bound for this routing key. See the module doc.
            level = logging.DEBUG if self._unrouted_logged else logging.WARNING
            self._unrouted_logged = True
            log.log(
                level,
                "event %s (%s) was not routed to any queue of exchange %s; marked sent",
                row.event_id,
                row.routing_key,
                self._messaging.exchange,
                extra={"event_id": row.event_id, "routing_key": row.routing_key},
            )
        lag = lag_seconds(row, datetime.now(UTC))
        if self._metrics.lag is not None:
            self._metrics.lag.observe(lag)
        log.debug(
            "event %s published after %.1f ms",
            row.event_id,
            lag * 1000,
            extra={"event_id": row.event_id, "routing_key": row.routing_key, "lag_ms": round(lag * 1000, 1)},
        )
