"""The outbox relay on its own: CPU per published (and confirmed) event, and events/s.

The real ``OutboxRelay`` over a fresh SQLite outbox (the order service's migrations), publishing
to a namespace of the run's own on the machine's RabbitMQ (one bound quorum queue, as the
shop's consumers declare it; all deleted after). Two phases per round:

``trickle``  events are committed one at a time at ``--rate`` per second, each commit waking
             the relay, as the order service's saga does: the relay's batches stay small.
             ``cpu_us_per_event`` counts this process's CPU (every thread) from the first
             commit until the last event is marked sent, the commits included.
``backlog``  ``--events`` rows are written first, then the relay drains them in full batches;
             only the draining is timed.

    .venv/bin/python bench/relay.py                 # 3 rounds, about a minute
    .venv/bin/python bench/relay.py --rounds 5

The last line printed is one JSON object with the medians over the rounds. To compare two
versions, run the same command from each checkout, alternating.
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
from services.common.messaging import outbox  # noqa: E402
from services.common.messaging.consumer import EventConsumer  # noqa: E402
from services.common.messaging.consumer_settings import ConsumerSettings  # noqa: E402
from services.common.messaging.outbox import OutboxMessage  # noqa: E402
from services.common.messaging.relay import OutboxRelay, RelaySettings  # noqa: E402
from services.common.migrations import migrate  # noqa: E402
from services.common.values import utc_now  # noqa: E402
from services.order import events  # noqa: E402
from shop.order.v1 import events_pb2  # noqa: E402
from tests.support.bus import Bus, bus_namespace  # noqa: E402

CONSUMER = "billing"
MIGRATIONS = ROOT / "services/order/migrations"
SETTINGS = RelaySettings()  # what the services run with


def _row() -> OutboxMessage:
    event_id = f"evt_{uuid.uuid4().hex}"
    body = events_pb2.OrderEvent(event_id=event_id, kind=events_pb2.ORDER_EVENT_KIND_CONFIRMED)
    body.order.order_id = f"ord_{uuid.uuid4().hex}"
    body.order.user_id = "usr_bench"
    return OutboxMessage(event_id, events.CONFIRMED, events.MESSAGE_TYPE, body.SerializeToString(), utc_now())


async def _until_sent(relay: OutboxRelay, count: int, within: float = 120.0) -> None:
    deadline = time.perf_counter() + within
    # The relay has no completion hook; a poll every 2 ms is noise beside a phase of seconds.
    while relay.published < count:
        if time.perf_counter() > deadline:
            raise SystemExit(f"only {relay.published} of {count} events confirmed within {within} s")
        await asyncio.sleep(0.002)


async def _round(bus: Bus, scratch: Path, events_count: int, rate: float) -> dict[str, float]:
    database = Database("order", f"sqlite:///{scratch / f'{uuid.uuid4().hex}.sqlite3'}")
    await migrate(database, MIGRATIONS)
    declaring = EventConsumer(
        bus.settings, database, ConsumerSettings(CONSUMER, (events.CONFIRMED,)), _ignore
    )
    declaring.start()  # declares and binds the queue the events are routed to
    await asyncio.to_thread(bus.wait_consumer, CONSUMER)
    await declaring.close()
    relay = OutboxRelay(database, bus.settings, SETTINGS)
    relay.start()
    await asyncio.wait_for(relay.connected.wait(), 30)
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        for n in range(events_count):
            row = _row()
            await database.transact(lambda tx, row=row: outbox.add(tx, row))
            relay.wake()
            pause = wall + (n + 1) / rate - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
        await _until_sent(relay, events_count)
        trickle_cpu, trickle_wall = time.process_time() - cpu, time.perf_counter() - wall

        rows = [_row() for _ in range(events_count)]
        await relay.close()  # written while no relay runs: the next one finds a backlog

        def write_all(tx: Tx) -> None:
            for row in rows:
                outbox.add(tx, row)

        await database.transact(write_all)
        relay = OutboxRelay(database, bus.settings, SETTINGS)
        cpu, wall = time.process_time(), time.perf_counter()
        relay.start()
        await _until_sent(relay, events_count)
        backlog_cpu, backlog_wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await relay.close()
        await database.close()
    return {
        "trickle_cpu_us_per_event": trickle_cpu * 1e6 / events_count,
        "trickle_events_per_s": events_count / trickle_wall,
        "backlog_cpu_us_per_event": backlog_cpu * 1e6 / events_count,
        "backlog_events_per_s": events_count / backlog_wall,
    }


def _ignore(tx: Tx, event: events_pb2.OrderEvent) -> None:
    """The declaring consumer never runs long enough to apply anything."""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=2000, help="events per phase")
    parser.add_argument(
        "--rate", type=float, default=250.0, help="trickle phase: events committed per second"
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = time.monotonic()
    rounds: list[dict[str, float]] = []
    with bus_namespace((CONSUMER,)) as bus, tempfile.TemporaryDirectory(prefix="tsunagu-bench-") as scratch:
        for _ in range(args.rounds):
            rounds.append(asyncio.run(_round(bus, Path(scratch), args.events, args.rate)))
            print(json.dumps({k: round(v, 1) for k, v in rounds[-1].items()}), file=sys.stderr)
    result: dict[str, Any] = {
        name: round(statistics.median(r[name] for r in rounds), 1) for name in rounds[0]
    }
    result.update(
        events=args.events,
        rate=args.rate,
        rounds=args.rounds,
        cpus=os.cpu_count(),
        wall_seconds=round(time.monotonic() - started, 1),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
