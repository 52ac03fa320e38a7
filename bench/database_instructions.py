"""Client instructions per database read and per write transaction, counted by callgrind.

A service's CPU per order on PostgreSQL is about twice its CPU on SQLite (``bench/orders.py``),
and most of that difference is the client side of each round trip: psycopg's Python, the
hop to a worker thread and back. Times per operation move by a third between minutes on this
shared machine; instruction counts do not. So this benchmark runs the real
``services.common.database.Database`` in a child process under ``valgrind --tool=callgrind``
and counts what one operation costs the service's process:

  read   ``Database.read`` of one row by primary key (what ``GetProduct`` or ``GetUser`` does)
  write  ``Database.transact`` of a read, an UPDATE and an INSERT (the shape of a saga step's
         save with its outbox row, or a participant's write)

Each (backend, operation) runs twice, ``--low`` and ``--high`` operations after a warm-up, at
concurrency 16 in one event loop; (count(high) - count(low)) / (high - low) is one operation,
free of start-up and shutdown. PostgreSQL runs in a fresh database on the machine's server
(``BENCH_POSTGRES_DSN``'s server; created and dropped here); SQLite in a temporary file. Only
the client process is counted: the PostgreSQL server's own work is not in these figures.

    .venv/bin/python bench/database_instructions.py                      # both backends, ~4 min
    .venv/bin/python bench/database_instructions.py --backends postgresql --operations read

The last line printed is one JSON object: ``instructions_per_op`` keyed ``<backend>_<operation>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.common.database import Database, Tx  # noqa: E402

PG_ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
ROWS = 1000
CONCURRENCY = 16
WARMUP = 50
SCHEMA = {
    "sqlite": (
        "CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
        "CREATE TABLE log (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)",
    ),
    "postgresql": (
        "CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)",
        "CREATE TABLE log (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL)",
    ),
}


def _read(number: int) -> Any:
    return lambda tx: tx.one("SELECT id, n FROM items WHERE id = ?", (number % ROWS + 1,))


def _write(number: int) -> Any:
    def work(tx: Tx) -> None:
        key = number % ROWS + 1
        tx.one("SELECT id, n FROM items WHERE id = ?", (key,))
        tx.execute("UPDATE items SET n = n + 1 WHERE id = ?", (key,))
        tx.execute("INSERT INTO log (body) VALUES (?)", (f"event {number}",))

    return work


async def _operate(url: str, operation: str, count: int) -> None:
    """The child: WARMUP then ``count`` operations, CONCURRENCY at a time."""
    database = Database("bench", url)
    try:

        async def run(total: int) -> None:
            numbers = iter(range(total))

            async def client() -> None:
                for number in numbers:
                    if operation == "read":
                        await database.read(_read(number))
                    else:
                        await database.transact(_write(number))

            await asyncio.gather(*(client() for _ in range(CONCURRENCY)))

        await run(WARMUP)
        await run(count)
    finally:
        await database.close()


def _prepare(url: str, dialect: str) -> None:
    database = Database("bench", url)

    def schema(tx: Tx) -> None:
        for statement in SCHEMA[dialect]:
            tx.execute(statement)
        for number in range(1, ROWS + 1):
            tx.execute("INSERT INTO items (id, n) VALUES (?, 0)", (number,))

    database.transact_sync(schema)
    asyncio.run(database.close())


def _count(url: str, operation: str, count: int, scratch: Path) -> int:
    """Instructions of a child doing ``count`` operations (callgrind's total, every thread)."""
    out = scratch / f"callgrind.{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--child",
            url,
            operation,
            str(count),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=900,
    )
    found = re.search(r"Collected : (\d+)", result.stderr)
    if found is None:
        raise RuntimeError(f"callgrind reported no total:\n{result.stderr[-2000:]}")
    out.unlink(missing_ok=True)
    return int(found.group(1))


def _postgres_database() -> tuple[str, str]:
    import psycopg

    name = f"bench_db_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return name, f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{name}"


def _drop_postgres_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--operations", default="read,write")
    parser.add_argument("--low", type=int, default=200)
    parser.add_argument("--high", type=int, default=600)
    parser.add_argument("--child", nargs=3, metavar=("URL", "OPERATION", "COUNT"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        import uvloop  # the services' event loop (services/common/app.py)

        url, operation, count = options.child
        uvloop.run(_operate(url, operation, int(count)))
        return
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="tsunagu-bench-db-") as temporary:
        scratch = Path(temporary)
        for backend in options.backends.split(","):
            dropped = ""
            if backend == "postgresql":
                dropped, url = _postgres_database()
            else:
                url = f"sqlite:///{scratch / 'bench.sqlite3'}"
            try:
                _prepare(url, backend)
                for operation in options.operations.split(","):
                    low = _count(url, operation, options.low, scratch)
                    high = _count(url, operation, options.high, scratch)
                    per_op = (high - low) / (options.high - options.low)
                    results[f"{backend}_{operation}"] = round(per_op)
                    print(
                        f"{backend} {operation}: {per_op / 1000:.1f}k instructions per operation", flush=True
                    )
            finally:
                if dropped:
                    _drop_postgres_database(dropped)
    print(
        json.dumps(
            {
                "instructions_per_op": results,
                "concurrency": CONCURRENCY,
                "low": options.low,
                "high": options.high,
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
