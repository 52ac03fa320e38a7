"""Group commit on PostgreSQL when some writes are refused: what the others' writes cost.

A write that raises inside a shared batch has to be undone without undoing the others
(``services/common/group_commit.py``). This bench measures what that costs the writes that
succeed. WRITERS coroutines share one ``Database`` and run COUNT small writes in all (one
INSERT each); every Nth write raises after its INSERT, as a refused request does after
claiming its idempotency key. One pass runs per failure rate, each on a fresh database that
is created on the machine's PostgreSQL and dropped after.

Reported per rate: ``client_us_per_write`` (this process's CPU, every thread) and
``server_us_per_write`` (the CPU of the database's backends, from /proc), both per write that
succeeded, and ``writes_per_s`` (that succeeded). Medians over the rounds; the last line
printed is one JSON object.

    .venv/bin/python bench/refused_writes.py                      # rates 0, 1/20, 1/5, 1/3, 1/2
    .venv/bin/python bench/refused_writes.py --every 0,3 --rounds 3

Compare two commits by running it in a worktree of each, in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.common.database import Database, Tx  # noqa: E402

ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


class Refused(Exception):
    """The answer of a write refused after its INSERT."""


def backend_cpu_seconds(admin: psycopg.Connection[Any], database: str) -> float:
    """User + system CPU of the backends connected to ``database`` (all of them started after
    the bench opened its connections, and none ends before the next reading)."""
    rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,)).fetchall()
    ticks = 0
    for (pid,) in rows:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def insert(number: int, every: int) -> Callable[[Tx], int]:
    def work(tx: Tx) -> int:
        tx.execute("INSERT INTO items (id, n) VALUES (?, ?)", (str(number), number))
        if every and number % every == 0:
            raise Refused(number)
        return 1

    return work


async def one_pass(admin: psycopg.Connection[Any], every: int, count: int, writers: int) -> dict[str, float]:
    name = f"bench_refused_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        database = Database("bench", f"{ADMIN_DSN.rsplit('/', 1)[0]}/{name}")
        try:
            await database.transact(
                lambda tx: tx.execute("CREATE TABLE items (id TEXT PRIMARY KEY, n INTEGER)")
            )
            # Every worker thread opens its connection (and its backend) before the clock starts.
            await asyncio.gather(*(database.read(lambda tx: tx.one("SELECT 1")) for _ in range(16)))
            numbers: Iterator[int] = iter(range(count))
            refused = 0

            async def writer() -> None:
                nonlocal refused
                for number in numbers:
                    try:
                        await database.transact(insert(number, every))
                    except Refused:
                        refused += 1

            server = backend_cpu_seconds(admin, name)
            client, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(writer() for _ in range(writers)))
            client, wall = time.process_time() - client, time.perf_counter() - wall
            server = backend_cpu_seconds(admin, name) - server
            succeeded = count - refused
            return {
                "client_us_per_write": client * 1e6 / succeeded,
                "server_us_per_write": server * 1e6 / succeeded,
                "writes_per_s": succeeded / wall,
            }
        finally:
            await database.close()
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run(rates: list[int], rounds: int, count: int, writers: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, float]]] = {str(every): [] for every in rates}
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        for _ in range(rounds):
            for every in rates:
                results[str(every)].append(await one_pass(admin, every, count, writers))
    medians = {
        every: {key: round(statistics.median(p[key] for p in passes), 2) for key in passes[0]}
        for every, passes in results.items()
    }
    return {"by_refused_every": medians, "writes": count, "writers": writers, "rounds": rounds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--every", default="0,20,5,3,2", help="refuse every Nth write (0: none), comma separated"
    )
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rates = [int(every) for every in args.every.split(",")]
    started = time.perf_counter()
    result = asyncio.run(run(rates, args.rounds, args.count, args.writers))
    print(
        json.dumps(
            {**result, "cpus": os.cpu_count(), "wall_seconds": round(time.perf_counter() - started, 1)}
        )
    )


if __name__ == "__main__":
    main()
