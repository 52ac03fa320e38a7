"""The event consumer against the machine's RabbitMQ and a real database (SQLite, PostgreSQL).

Each test gets its own namespace on the broker (deleted afterwards) and counts effects in a
table of its own, so "applied once" is judged from what was committed, not from the consumer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiormq.abc import DeliveredMessage

from mesh.errors import DependencyUnavailable
from services.common.database import Database, Tx
from services.common.messaging import consumer as consumer_module
from services.common.messaging.consumer import EventConsumer, decode_order_event
from services.common.messaging.consumer_settings import ConsumerSettings
from services.common.migrations import migrate
from services.common.settings import MessagingSettings
from shop.order.v1 import events_pb2, order_pb2
from tests.support.bus import Bus, bus_namespace
from tests.support.sqlite_commits import counting_commits
from tests.support.tcp_proxy import TcpProxy

CONSUMER = "billing"
KEYS = ("order.created", "order.confirmed", "order.cancelled")


def event(kind: int = events_pb2.ORDER_EVENT_KIND_CONFIRMED, order_id: str = "") -> events_pb2.OrderEvent:
    return events_pb2.OrderEvent(
        event_id=f"evt_{uuid.uuid4().hex}",
        kind=kind,  # type: ignore[arg-type]
        order=order_pb2.Order(order_id=order_id or f"ord_{uuid.uuid4().hex}", user_id="usr_1"),
    )


@pytest.fixture
def bus() -> AsyncIterator[Bus]:
    with bus_namespace((CONSUMER,)) as namespace:
        yield namespace  # type: ignore[misc]


@pytest.fixture
async def database(database_url: str, tmp_path: Path) -> AsyncIterator[Database]:
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "001_init.sql").write_text(
        "CREATE TABLE inbox (consumer TEXT NOT NULL, message_id TEXT NOT NULL, received_time TEXT NOT NULL, "
        "PRIMARY KEY (consumer, message_id));\n"
        "CREATE TABLE effects (order_id TEXT NOT NULL, event_id TEXT NOT NULL);\n"
    )
    db = Database("consumer-test", database_url)
    await migrate(db, migrations)
    yield db
    await db.close()


def record(tx: Tx, evt: events_pb2.OrderEvent) -> None:
    tx.execute("INSERT INTO effects (order_id, event_id) VALUES (?, ?)", (evt.order.order_id, evt.event_id))


def recording(seen: list[str]) -> Callable[[Tx, events_pb2.OrderEvent], None]:
    """A handler that notes each event id it is given in ``seen``, then records the event."""

    def handler(tx: Tx, evt: events_pb2.OrderEvent) -> None:
        seen.append(evt.event_id)
        record(tx, evt)

    return handler


async def effects(db: Database) -> list[str]:
    rows = await db.transact(lambda tx: tx.query("SELECT event_id FROM effects ORDER BY event_id"))
    return [str(r["event_id"]) for r in rows]


async def until(predicate: Callable[[], object], within: float = 30.0) -> None:
    """Poll an async predicate until it is true or the deadline passes (then fail)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():  # type: ignore[misc]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached within the deadline")


def consumer(
    bus: Bus, db: Database, handler: Callable[[Tx, events_pb2.OrderEvent], None], **kw: int
) -> EventConsumer:
    settings = ConsumerSettings(
        CONSUMER, KEYS, prefetch=kw.get("prefetch", 8), max_attempts=kw.get("attempts", 3)
    )
    return EventConsumer(bus.settings, db, settings, handler)


async def test_each_event_is_applied_once_even_when_published_twice(bus: Bus, database: Database) -> None:
    running = consumer(bus, database, record)
    running.start()
    await asyncio.to_thread(bus.wait_consumer, CONSUMER)
    first, second = event(), event()
    await asyncio.to_thread(bus.publish, [first, second, first, first])  # same message_id thrice

    async def done() -> bool:
        return running.applied + running.duplicates == 4

    await until(done)
    await running.close()
    assert await effects(database) == sorted([first.event_id, second.event_id])
    assert (running.applied, running.duplicates) == (2, 2)
    assert await asyncio.to_thread(bus.depth, bus.queue(CONSUMER)) == 0


async def waiting_in_the_queue(bus: Bus, db: Database, count: int) -> list[events_pb2.OrderEvent]:
    """``count`` events published into the consumer's queue (declared and bound first by a
    consumer started and stopped), none consumed yet: the backlog a restarted consumer meets."""
    declaring = consumer(bus, db, record)
    declaring.start()
    await asyncio.to_thread(bus.wait_consumer, CONSUMER)
    await declaring.close()
    backlog = [event() for _ in range(count)]
    await asyncio.to_thread(bus.publish, backlog)
    return backlog


async def test_events_waiting_in_the_queue_are_applied_in_order_and_on_sqlite_share_commits(
    bus: Bus, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backlog (a consumer restarted behind its queue) is applied in publish order; on SQLite
    the waiting messages' transactions go out together, so they share COMMITs."""
    commits = counting_commits(monkeypatch)
    db = Database("consumer-test", database.url)  # connections opened from here on are traced
    backlog = await waiting_in_the_queue(bus, db, 30)
    applied: list[str] = []
    running = consumer(bus, db, recording(applied), prefetch=32)
    commits.clear()
    running.start()

    async def all_applied() -> bool:
        return running.applied == len(backlog)

    await until(all_applied)
    await running.close()
    await db.close()
    assert applied == [e.event_id for e in backlog]
    assert sorted(await effects(database)) == sorted(e.event_id for e in backlog)
    if database.dialect == "sqlite":
        assert 1 <= len(commits) < len(backlog) / 2, commits


async def test_a_handler_that_always_fails_sends_the_message_to_the_dlq_and_the_queue_moves_on(
    bus: Bus, database: Database
) -> None:
    calls: list[str] = []
    poison = event()

    def handler(tx: Tx, evt: events_pb2.OrderEvent) -> None:
        calls.append(evt.event_id)
        if evt.event_id == poison.event_id:
            record(tx, evt)  # written, then rolled back by the failure
            raise RuntimeError("this event always fails")
        record(tx, evt)

    running = consumer(bus, database, handler, attempts=3)
    running.start()
    await asyncio.to_thread(bus.wait_consumer, CONSUMER)
    later = event()
    await asyncio.to_thread(bus.publish, [poison, later])
    assert await asyncio.to_thread(bus.wait_depth, bus.dlq(CONSUMER), 1) == 1

    async def later_applied() -> bool:
        return later.event_id in await effects(database)

    await until(later_applied)
    await running.close()
    assert calls.count(poison.event_id) == 3  # exactly max_attempts deliveries, then the DLQ
    assert await effects(database) == [later.event_id]
    assert await asyncio.to_thread(bus.depth, bus.queue(CONSUMER)) == 0


async def test_a_malformed_body_goes_straight_to_the_dlq(bus: Bus, database: Database) -> None:
    calls: list[str] = []
    running = consumer(bus, database, recording(calls), attempts=5)
    running.start()
    await asyncio.to_thread(bus.wait_consumer, CONSUMER)
    await asyncio.to_thread(bus.publish_raw, "order.confirmed", b"\xff\xfe not protobuf", "junk-1")
    await asyncio.to_thread(bus.publish_raw, "order.confirmed", b"", "junk-2")  # parses, but empty
    good = event()
    await asyncio.to_thread(bus.publish, [good])
    assert await asyncio.to_thread(bus.wait_depth, bus.dlq(CONSUMER), 2) == 2

    async def good_applied() -> bool:
        return good.event_id in await effects(database)

    await until(good_applied)
    await running.close()
    assert calls == [good.event_id]  # the handler never saw the junk, the consumer kept going
    assert running.dead_lettered == 2


async def test_a_message_whose_commit_fails_is_not_acked_and_is_redelivered(
    bus: Bus, database: Database
) -> None:
    attempts: list[str] = []

    def handler(tx: Tx, evt: events_pb2.OrderEvent) -> None:
        attempts.append(evt.event_id)
        record(tx, evt)
        if len(attempts) == 1:
            raise RuntimeError("the transaction fails after the effect was written")

    running = consumer(bus, database, handler, attempts=5)
    running.start()
    await asyncio.to_thread(bus.wait_consumer, CONSUMER)
    only = event()
    await asyncio.to_thread(bus.publish, [only])

    async def applied() -> bool:
        return running.applied == 1

    await until(applied)
    await running.close()
    assert attempts == [only.event_id, only.event_id]  # redelivered after the failed commit
    assert await effects(database) == [only.event_id]  # the first attempt's write rolled back
    assert await asyncio.to_thread(bus.depth, bus.dlq(CONSUMER)) == 0


async def test_an_unavailable_database_holds_the_message_without_burning_attempts(
    bus: Bus, database: Database
) -> None:
    attempts: list[str] = []

    def handler(tx: Tx, evt: events_pb2.OrderEvent) -> None:
        attempts.append(evt.event_id)
        if len(attempts) <= 6:  # twice max_attempts: a DLQ'd message would never get through
            raise DependencyUnavailable("consumer-test database", "connection refused")
        record(tx, evt)

    running = consumer(bus, database, handler, attempts=3)
    running.start()
    await asyncio.to_thread(bus.wait_consumer, CONSUMER)
    only = event()
    await asyncio.to_thread(bus.publish, [only])

    async def applied() -> bool:
        return running.applied == 1

    await until(applied)
    await running.close()
    assert attempts == [only.event_id] * 7  # retried in place, one delivery
    assert await effects(database) == [only.event_id]
    assert await asyncio.to_thread(bus.depth, bus.dlq(CONSUMER)) == 0


async def test_a_database_outage_holding_a_backlog_is_logged_once_and_loses_nothing(
    bus: Bus, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Several waiting messages held through one outage: one warning, one recovery line."""
    failures = 0

    def handler(tx: Tx, evt: events_pb2.OrderEvent) -> None:
        nonlocal failures
        if failures < 8:  # more failures than messages: every message meets the outage
            failures += 1
            raise DependencyUnavailable("consumer-test database", "disk I/O error")
        record(tx, evt)

    backlog = await waiting_in_the_queue(bus, database, 5)
    caplog.set_level(logging.INFO, logger="services.common.messaging.consumer")
    running = consumer(bus, database, handler, prefetch=32)
    running.start()

    async def all_applied() -> bool:
        return running.applied == len(backlog)

    await until(all_applied)
    await running.close()
    assert sorted(await effects(database)) == sorted(e.event_id for e in backlog)
    lines = [r.getMessage() for r in caplog.records if r.name == "services.common.messaging.consumer"]
    assert sum("database unavailable" in line for line in lines) == 1, lines
    assert sum("database answers again" in line for line in lines) == 1, lines


async def test_the_consumer_reconnects_after_a_broker_outage_and_logs_it_once(
    bus: Bus, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = TcpProxy("127.0.0.1", 5672)
    port = await proxy.start()
    settings = ConsumerSettings(
        CONSUMER, KEYS, prefetch=8, reconnect_base_seconds=0.05, reconnect_max_seconds=0.2
    )
    running = EventConsumer(
        MessagingSettings(f"amqp://guest:guest@127.0.0.1:{port}/", bus.namespace), database, settings, record
    )
    caplog.set_level(logging.INFO, logger="services.common.messaging.consumer")
    try:
        running.start()
        await asyncio.to_thread(bus.wait_consumer, CONSUMER)
        before, during = event(), event()
        await asyncio.to_thread(bus.publish, [before])

        async def applied(n: int) -> Callable[[], object]:
            async def check() -> bool:
                return running.applied == n

            return check

        await until(await applied(1))
        await proxy.sever()  # the broker vanishes for the consumer; the queue keeps what arrives
        await asyncio.to_thread(bus.publish, [during])

        async def retried_thrice() -> bool:
            return proxy.refused >= 3

        await until(retried_thrice)  # several failed reconnects: an outage, not a blip
        assert running.applied == 1
        proxy.heal()
        await until(await applied(2))
    finally:
        await running.close()
        await proxy.stop()
    assert await effects(database) == sorted([before.event_id, during.event_id])
    ours = [r for r in caplog.records if r.name == "services.common.messaging.consumer"]
    warnings = [r.getMessage() for r in ours if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "lost" in warnings[0], warnings  # once per outage, not per retry
    assert "guest:guest" not in caplog.text


async def test_a_bug_outside_the_handler_is_logged_with_its_traceback_not_as_a_lost_broker(
    bus: Bus, database: Database, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison, later = event(), event()

    def buggy_decode(message: DeliveredMessage) -> tuple[str, events_pb2.OrderEvent]:
        message_id, decoded = decode_order_event(message)
        if message_id == poison.event_id:
            raise KeyError("a bug in the consumer's own code")
        return message_id, decoded

    monkeypatch.setattr(consumer_module, "decode_order_event", buggy_decode)
    caplog.set_level(logging.INFO, logger="services.common.messaging.consumer")
    running = consumer(bus, database, record, attempts=3)
    running.start()
    await asyncio.to_thread(bus.wait_consumer, CONSUMER)
    await asyncio.to_thread(bus.publish, [poison, later])
    # Counted by the broker like a failing handler: max_attempts deliveries, then the DLQ.
    assert await asyncio.to_thread(bus.wait_depth, bus.dlq(CONSUMER), 1) == 1

    async def later_applied() -> bool:
        return later.event_id in await effects(database)

    await until(later_applied)
    await running.close()
    ours = [r for r in caplog.records if r.name == "services.common.messaging.consumer"]
    assert not [r.getMessage() for r in ours if "broker" in r.getMessage()], "the broker was never lost"
    failures = [r for r in ours if r.levelno >= logging.ERROR]
    assert len(failures) == 3  # one per delivery, each with the traceback and the message id
    assert all(r.exc_info is not None and r.exc_info[0] is KeyError for r in failures)
    assert all(getattr(r, "message_id", "") == poison.event_id for r in failures)
