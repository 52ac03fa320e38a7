"""An event consumer working off a backlog: CPU per event and events/s.

What a consumer restarted behind its queue does: EVENTS order events are published first (as
the relay publishes them: persistent, confirmed) to a namespace of the run's own on the
machine's RabbitMQ (deleted after), then the real ``EventConsumer`` applies them to a fresh
SQLite file (inbox claim plus one row per event, in one transaction each). Timed from the
consumer's start to the last event applied; ``cpu_us_per_event`` is this process's CPU (every
thread) over that time per event.

    .venv/bin/python bench/consumer_backlog.py           # 3000 events
    .venv/bin/python bench/consumer_backlog.py --rounds 3

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.common.database import Database, Tx  # noqa: E402
from services.common.messaging.consumer import EventConsumer  # noqa: E402
from services.common.messaging.consumer_settings import ConsumerSettings  # noqa: E402
from services.common.migrations import migrate  # noqa: E402
from shop.order.v1 import events_pb2, order_pb2  # noqa: E402
from tests.support.bus import Bus, bus_namespace  # noqa: E402

CONSUMER = "billing"
KEYS = ("order.created", "order.confirmed", "order.cancelled")
SCHEMA = (
    "CREATE TABLE inbox (consumer TEXT NOT NULL, message_id TEXT NOT NULL, received_time TEXT NOT NULL, "
    "PRIMARY KEY (consumer, message_id));\n"
    "CREATE TABLE effects (order_id TEXT NOT NULL, event_id TEXT NOT NULL);\n"
)


def _event() -> events_pb2.OrderEvent:
    return events_pb2.OrderEvent(
        event_id=f"evt_{uuid.uuid4().hex}",
        kind=events_pb2.ORDER_EVENT_KIND_CONFIRMED,
        order=order_pb2.Order(order_id=f"ord_{uuid.uuid4().hex}", user_id="usr_1"),
    )


def _record(tx: Tx, event: events_pb2.OrderEvent) -> None:
    tx.execute(
        "INSERT INTO effects (order_id, event_id) VALUES (?, ?)", (event.order.order_id, event.event_id)
    )


async def _round(bus: Bus, scratch: Path, events: int, prefetch: int) -> dict[str, float]:
    migrations = scratch / "migrations"
    migrations.mkdir(exist_ok=True)
    (migrations / "001_init.sql").write_text(SCHEMA)
    database = Database("bench-consumer", f"sqlite:///{scratch / f'{uuid.uuid4().hex}.sqlite3'}")
    await migrate(database, migrations)
    settings = ConsumerSettings(CONSUMER, KEYS, prefetch=prefetch, max_attempts=3)
    declaring = EventConsumer(bus.settings, database, settings, _record)  # the queue, bound
    declaring.start()
    await asyncio.to_thread(bus.wait_consumer, CONSUMER)
    await declaring.close()
    await asyncio.to_thread(bus.publish, [_event() for _ in range(events)])
    consumer = EventConsumer(bus.settings, database, settings, _record)
    cpu, wall = time.process_time(), time.perf_counter()
    consumer.start()
    deadline = wall + 120
    # The consumer has no completion hook; a poll every 5 ms is noise beside a run of seconds.
    while consumer.applied < events and time.perf_counter() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await consumer.close()
    await database.close()
    if consumer.applied != events:
        raise SystemExit(f"only {consumer.applied} of {events} events applied within 120 s")
    return {"events_per_s": events / wall, "cpu_us_per_event": cpu * 1e6 / events}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--prefetch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rounds: list[dict[str, float]] = []
    with bus_namespace((CONSUMER,)) as bus, tempfile.TemporaryDirectory(prefix="tsunagu-bench-") as scratch:
        for _ in range(args.rounds):
            rounds.append(asyncio.run(_round(bus, Path(scratch), args.events, args.prefetch)))
            print(json.dumps({k: round(v, 1) for k, v in rounds[-1].items()}), file=sys.stderr)
    result: dict[str, Any] = {
        "events": args.events,
        "prefetch": args.prefetch,
        "rounds": args.rounds,
        "events_per_s": round(statistics.median(r["events_per_s"] for r in rounds)),
        "cpu_us_per_event": round(statistics.median(r["cpu_us_per_event"] for r in rounds)),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
