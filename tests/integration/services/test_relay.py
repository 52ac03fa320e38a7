"""The outbox relay against the machine's real RabbitMQ (127.0.0.1:5672).

Each test has its own namespace (so its own exchange), binds its own test queue to read what
the relay published, and deletes both at teardown. Outages are made with a small TCP
forwarder in front of the broker, which can refuse connections, cut them mid-stream, or hold
back the broker's replies (the publisher confirms) while still forwarding the publications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from services.common.database import Database
from services.common.messaging import outbox
from services.common.messaging.outbox import OutboxMessage
from services.common.messaging.relay import OutboxRelay, RelaySettings
from services.common.messaging.topology import declare_exchange
from services.common.migrations import migrate
from services.common.settings import MessagingSettings
from services.common.values import utc_now
from services.order import domain, events
from services.order.domain import Address, Line, Price
from services.order.store import OrderStore
from shop.order.v1 import events_pb2
from tests.support.processes import free_port

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
BROKER = ("127.0.0.1", 5672)
MIGRATIONS = Path("services/order/migrations")
FAST = RelaySettings(
    batch_size=25,
    poll_seconds=0.05,
    backoff_base_seconds=0.05,
    backoff_max_seconds=0.3,
    connect_timeout_seconds=2,
)


async def until(check: Callable[[], Awaitable[bool]], within: float = 20.0, what: str = "") -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(0.02)


@dataclass
class Listener:
    """A test queue bound to every routing key of a namespace's exchange; both deleted after."""

    settings: MessagingSettings
    received: list[AbstractIncomingMessage] = field(default_factory=list)
    connection: Any = None
    queue: Any = None
    bind: bool = True

    async def open(self) -> Listener:
        self.connection = await aio_pika.connect(AMQP_URL)
        channel = await self.connection.channel()
        exchange = await declare_exchange(channel, self.settings)
        self.queue = await channel.declare_queue(f"{self.settings.namespace}.test", durable=True)
        if self.bind:
            await self.queue.bind(exchange, routing_key="#")
        return self

    async def drain(self) -> list[AbstractIncomingMessage]:
        while (message := await self.queue.get(no_ack=True, fail=False)) is not None:
            self.received.append(message)
        return self.received

    async def wait_for(self, ids: set[str], within: float = 30.0) -> None:
        async def arrived() -> bool:
            return ids <= {m.message_id for m in await self.drain()}

        await until(arrived, within, f"{len(ids)} messages")

    async def close(self) -> None:
        channel = await self.connection.channel()
        with contextlib.suppress(Exception):
            await channel.queue_delete(f"{self.settings.namespace}.test")
        with contextlib.suppress(Exception):
            await channel.exchange_delete(self.settings.exchange)
        await self.connection.close()


class Forwarder:
    """A TCP forwarder on a free loopback port to the broker, with a switchable failure mode."""

    def __init__(self) -> None:
        self.forwarding = False  # False: accept and close at once (a broker that refuses)
        self.replies = asyncio.Event()  # cleared: the broker's replies are held back
        self.replies.set()
        self.accepted = 0
        self.cuts = 0
        self.cut_after_bytes = 0  # cut a connection once it forwarded this much (0: never)
        self.cuts_left = 0
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Forwarder:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, password: str = "guest") -> str:
        return f"amqp://guest:{password}@127.0.0.1:{self.port}/"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if not self.forwarding:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(*BROKER)
        link = (writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(self._pipe(reader, up_writer, link), self._pipe(up_reader, writer, None))
        except Exception:  # a cut or a closed side ends both directions
            pass
        finally:
            self._links.discard(link)
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        target: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter] | None,
    ) -> None:
        forwarded = 0
        while data := await source.read(65536):
            if link is None:
                await self.replies.wait()
            target.write(data)
            await target.drain()
            forwarded += len(data)
            if link is not None and self.cuts_left > 0 and forwarded >= self.cut_after_bytes > 0:
                self.cuts_left -= 1
                self._cut(link)
                return
        target.transport.abort()

    def _cut(self, link: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        self.cuts += 1
        for writer in link:
            writer.transport.abort()

    async def close(self) -> None:
        for link in list(self._links):
            self._cut(link)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
def messaging() -> MessagingSettings:
    return MessagingSettings(amqp_url=AMQP_URL, namespace=f"t-relay-{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def listener(messaging: MessagingSettings) -> AsyncIterator[Listener]:
    opened = await Listener(messaging).open()
    yield opened
    await opened.close()


@pytest.fixture
async def forwarder() -> AsyncIterator[Forwarder]:
    started = await Forwarder().start()
    yield started
    await started.close()


async def open_database(url: str) -> Database:
    database = Database("order", url)
    await migrate(database, MIGRATIONS)
    return database


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(str(tmp_path / "order.sqlite3"))
    yield database
    await database.close()


@pytest.fixture
async def any_db(database_url: str) -> AsyncIterator[Database]:
    database = await open_database(database_url)
    yield database
    await database.close()


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[OutboxRelay]:
    relay.start()
    try:
        yield relay
    finally:
        await relay.close()


async def add_events(database: Database, count: int) -> list[str]:
    """``count`` outbox rows (OrderEvents of made-up orders); their ids in seq order."""
    ids = [str(uuid.uuid4()) for _ in range(count)]

    def work(tx: Any) -> None:
        for n, event_id in enumerate(ids):
            body = events_pb2.OrderEvent(event_id=event_id, kind=events_pb2.ORDER_EVENT_KIND_CREATED)
            body.order.order_id = f"o-{n}"
            outbox.add(
                tx,
                OutboxMessage(
                    event_id, events.CREATED, events.MESSAGE_TYPE, body.SerializeToString(), utc_now()
                ),
            )

    await database.transact(work)
    return ids


async def unsent(database: Database) -> int:
    return await database.transact(outbox.pending)


def first_seen(messages: list[AbstractIncomingMessage]) -> list[str]:
    seen: dict[str, None] = {}
    for message in messages:
        seen.setdefault(str(message.message_id), None)
    return list(seen)


async def test_events_leave_in_order_with_the_contract_properties(
    any_db: Database, messaging: MessagingSettings, listener: Listener
) -> None:
    async with running(OutboxRelay(any_db, messaging, FAST)) as relay:
        store = OrderStore(any_db, on_event=relay.wake)
        draft = domain.validate_create([Line("TEA", 2)], Address("Ada", "1 St", "Tokyo", "100", "JP"), "r-1")
        order = domain.new_order("o-1", "u-ada", draft, {"TEA": Price(1250, "EUR")}, utc_now())
        pending, _ = await store.create(order)
        await store.save(replace(pending, status=domain.OrderStatus.CONFIRMED))
        rows = await any_db.transact(
            lambda tx: tx.query("SELECT event_id, create_time FROM outbox ORDER BY seq")
        )
        await listener.wait_for({r["event_id"] for r in rows})
        await until(lambda: _zero(any_db), what="rows marked sent")
    messages = listener.received
    assert [m.message_id for m in messages] == [r["event_id"] for r in rows]
    assert [m.routing_key for m in messages] == ["order.created", "order.confirmed"]
    for message, row in zip(messages, rows, strict=True):
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.type == "shop.order.v1.OrderEvent"
        assert message.content_type == "application/x-protobuf"
        assert message.exchange == messaging.exchange
        assert message.timestamp is not None
        event = events_pb2.OrderEvent()
        event.ParseFromString(message.body)
        assert event.event_id == row["event_id"] and event.order.order_id == "o-1"
    kinds = [events_pb2.OrderEvent.FromString(m.body).kind for m in messages]
    assert kinds == [events_pb2.ORDER_EVENT_KIND_CREATED, events_pb2.ORDER_EVENT_KIND_CONFIRMED]
    sent = await any_db.transact(lambda tx: tx.query("SELECT sent_time, attempts FROM outbox"))
    assert all(r["sent_time"] is not None and r["attempts"] == 1 for r in sent)
    assert relay.published == 2


async def _zero(database: Database) -> bool:
    return await unsent(database) == 0


async def test_rows_are_marked_sent_only_after_the_broker_confirms(
    sqlite_db: Database, messaging: MessagingSettings, listener: Listener, forwarder: Forwarder
) -> None:
    forwarder.forwarding = True
    settings = MessagingSettings(amqp_url=forwarder.url(), namespace=messaging.namespace)
    async with running(OutboxRelay(sqlite_db, settings, FAST)) as relay:
        await asyncio.wait_for(relay.connected.wait(), 20)
        forwarder.replies.clear()  # publications still reach the broker, its confirms do not
        ids = await add_events(sqlite_db, 5)
        relay.wake()
        await listener.wait_for({ids[0]})  # the broker has the first message...
        assert await unsent(sqlite_db) == 5  # ...but without its confirm nothing is marked sent
        forwarder.replies.set()
        await listener.wait_for(set(ids))
        await until(lambda: _zero(sqlite_db), what="rows marked sent")
    assert first_seen(listener.received) == ids


async def test_a_broker_that_is_absent_then_appears(
    sqlite_db: Database,
    messaging: MessagingSettings,
    listener: Listener,
    forwarder: Forwarder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="services.common.messaging.relay")
    ids = await add_events(sqlite_db, 3)
    settings = MessagingSettings(amqp_url=forwarder.url(), namespace=messaging.namespace)
    async with running(OutboxRelay(sqlite_db, settings, FAST)) as relay:

        async def retried() -> bool:
            return forwarder.accepted >= 4 and relay.connect_failures >= 4

        await until(retried, what="the relay to retry")
        assert await unsent(sqlite_db) == 3 and listener.received == [] and not await listener.drain()
        forwarder.forwarding = True
        await listener.wait_for(set(ids))
        await until(lambda: _zero(sqlite_db), what="rows marked sent")
    assert first_seen(listener.received) == ids
    outage = [r for r in caplog.records if "unavailable" in r.getMessage() and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in outage] == [
        f"RabbitMQ at 127.0.0.1:{forwarder.port} unavailable; 3 events waiting in the outbox"
    ]
    assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_a_closed_port_keeps_rows_unsent_and_the_relay_retrying(
    sqlite_db: Database, messaging: MessagingSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await add_events(sqlite_db, 4)
    port = free_port()  # nobody listens here
    url = f"amqp://relay:s3cret-pw@127.0.0.1:{port}/"
    settings = MessagingSettings(amqp_url=url, namespace=messaging.namespace)
    async with running(OutboxRelay(sqlite_db, settings, FAST)) as relay:

        async def retried() -> bool:
            return relay.connect_failures >= 5

        await until(retried, what="five failed connection attempts")
        assert not relay.connected.is_set()
        assert await unsent(sqlite_db) == 4
        attempts = await sqlite_db.transact(lambda tx: tx.query("SELECT attempts, claimed_by FROM outbox"))
        assert all(r["attempts"] == 0 and r["claimed_by"] == "" for r in attempts)
    # One line for the whole outage (aiormq's per-attempt error is filtered out).
    outage = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert outage == [f"RabbitMQ at 127.0.0.1:{port} unavailable; 4 events waiting in the outbox"]
    assert "s3cret-pw" not in caplog.text and "s3cret-pw" not in repr(settings)


async def test_connections_cut_mid_stream_lose_and_skip_nothing(
    any_db: Database, messaging: MessagingSettings, listener: Listener, forwarder: Forwarder
) -> None:
    forwarder.forwarding = True
    forwarder.cut_after_bytes = 12_000  # a few dozen publications into each connection
    forwarder.cuts_left = 3
    settings = MessagingSettings(amqp_url=forwarder.url(), namespace=messaging.namespace)
    ids = await add_events(any_db, 200)
    async with running(OutboxRelay(any_db, settings, FAST)) as relay:
        await listener.wait_for(set(ids), within=60)
        await until(lambda: _zero(any_db), within=30, what="all 200 rows marked sent")
    assert forwarder.cuts == 3 and relay.connect_failures >= 3
    assert first_seen(listener.received) == ids  # every row, first published in seq order
    assert len(listener.received) >= 200  # at least once: a cut may repeat an unconfirmed one
    attempts = await any_db.transact(lambda tx: tx.one("SELECT MAX(attempts) AS most FROM outbox"))
    assert attempts is not None and attempts["most"] >= 2  # some rows were taken again after a cut


async def test_an_unroutable_event_is_marked_sent_and_logged(
    sqlite_db: Database, messaging: MessagingSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="services.common.messaging.relay")
    unbound = await Listener(messaging, bind=False).open()  # the exchange exists, no queue is bound
    try:
        ids = await add_events(sqlite_db, 2)
        async with running(OutboxRelay(sqlite_db, messaging, FAST)) as relay:
            await until(lambda: _zero(sqlite_db), what="unroutable rows marked sent")
        assert relay.published == 2
        warned = [r.getMessage() for r in caplog.records if "not routed" in r.getMessage()]
        assert warned == [
            f"event {ids[0]} (order.created) was not routed to any queue of exchange {messaging.exchange}; marked sent"
        ]
    finally:
        await unbound.close()


async def add_unbuildable(database: Database) -> str:
    """An outbox row the relay cannot turn into a message (its create_time is no timestamp)."""
    event_id = str(uuid.uuid4())
    row = OutboxMessage(event_id, events.CREATED, events.MESSAGE_TYPE, b"", "not a timestamp")
    await database.transact(lambda tx: outbox.add(tx, row))
    return event_id


async def test_a_row_that_cannot_become_a_message_is_a_bug_not_an_outage(
    sqlite_db: Database, messaging: MessagingSettings, listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="services.common.messaging.relay")
    before = await add_events(sqlite_db, 2)
    poison = await add_unbuildable(sqlite_db)
    after = await add_events(sqlite_db, 2)

    async def only_the_poison_left() -> bool:
        return await unsent(sqlite_db) == 1

    async with running(OutboxRelay(sqlite_db, messaging, FAST)) as relay:
        await listener.wait_for(set(before + after))
        await until(only_the_poison_left, what="every other row marked sent")
        later = await add_events(sqlite_db, 2)  # the poison row does not block what follows
        relay.wake()
        await listener.wait_for(set(later))
        await until(only_the_poison_left, what="the later rows marked sent")
        assert relay.connected.is_set()
    assert first_seen(listener.received) == before + after + later
    # The broker was never down: no outage reported, no reconnect.
    assert relay.connect_failures == 0
    assert not [r for r in caplog.records if "unavailable" in r.getMessage()]
    # A bug, logged once with its traceback and the event it concerns.
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and poison in errors[0].getMessage()
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is ValueError
    # The row stays in the outbox, unsent, taken once: not retried on every poll.
    row = await sqlite_db.transact(
        lambda tx: tx.one("SELECT sent_time, attempts, claimed_by FROM outbox WHERE event_id = ?", (poison,))
    )
    assert row == {"sent_time": None, "attempts": 1, "claimed_by": ""}


async def test_a_busy_relay_records_a_batch_and_claims_the_next_in_one_transaction(
    sqlite_db: Database, messaging: MessagingSettings, listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Draining a backlog of three batches takes four transactions (the first claim, then one
    "mark sent + claim the next" per batch), not a claim and a mark per batch: on a busy order
    service every relay transaction is a write with its fsync."""
    ids = await add_events(sqlite_db, 3 * FAST.batch_size)
    transactions = 0
    transact = sqlite_db.transact

    async def counted(work: Callable[[Any], Any]) -> Any:
        nonlocal transactions
        transactions += 1
        return await transact(work)

    monkeypatch.setattr(sqlite_db, "transact", counted)
    relay = OutboxRelay(sqlite_db, messaging, replace(FAST, poll_seconds=30.0))  # no poll's claim

    async def all_sent() -> bool:  # through the uncounted method: only the relay's count
        return await transact(outbox.pending) == 0

    async with running(relay):
        await listener.wait_for(set(ids))
        await until(all_sent, what="rows marked sent")
        drained = transactions
    assert first_seen(listener.received) == ids
    assert relay.published == len(ids)
    assert drained == 4


async def test_rows_nobody_woke_the_relay_for_are_found_by_its_poll(
    sqlite_db: Database, messaging: MessagingSettings, listener: Listener
) -> None:
    """Another instance's commits do not wake this relay: its idle wait ends at ``poll_seconds``
    and the rows go out anyway, again and again (the wait is re-armed after each timeout)."""
    async with running(OutboxRelay(sqlite_db, messaging, FAST)) as relay:
        await asyncio.wait_for(relay.connected.wait(), 20)
        for _ in range(3):
            ids = await add_events(sqlite_db, 2)  # no relay.wake()
            await listener.wait_for(set(ids), within=10.0)
        await until(lambda: _zero(sqlite_db), what="rows marked sent")
    assert relay.published == 6


async def test_a_relay_waiting_on_slow_confirms_keeps_its_claim_and_nobody_publishes_its_rows(
    any_db: Database, messaging: MessagingSettings, listener: Listener, forwarder: Forwarder
) -> None:
    """A claim is short (a dead relay's rows are taken over soon), so a live relay renews it
    while the broker's confirms are slow: the other instance's relay claims nothing meanwhile
    and publishes none of those rows a second time, out of order."""
    claim = 1.0  # renewed every 0.33 s: slack for a slow machine's transaction
    held = 3 * claim  # the confirms are late by several claim lengths
    forwarder.forwarding = True
    slow = MessagingSettings(amqp_url=forwarder.url(), namespace=messaging.namespace)
    first = OutboxRelay(any_db, slow, replace(FAST, claim_seconds=claim), owner="first")
    second = OutboxRelay(any_db, messaging, replace(FAST, claim_seconds=claim), owner="second")
    async with running(first):
        await asyncio.wait_for(first.connected.wait(), 20)
        forwarder.replies.clear()  # the publications reach the broker, its confirms do not
        ids = await add_events(any_db, 5)
        first.wake()
        await listener.wait_for(set(ids))  # published once, by the first relay
        async with running(second):
            await asyncio.wait_for(second.connected.wait(), 20)
            await asyncio.sleep(held)  # the broker's slowness: how long its confirms stay late
            assert second.published == 0 and await unsent(any_db) == 5
            forwarder.replies.set()
            await until(lambda: _zero(any_db), what="rows marked sent")
        assert (first.published, second.published) == (5, 0)
    assert [m.message_id for m in await listener.drain()] == ids  # each once, in order
