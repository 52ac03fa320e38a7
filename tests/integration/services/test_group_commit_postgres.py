"""Group commit on a real PostgreSQL database: writes queued meanwhile share one transaction."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import psycopg.errors
import pytest

from services.common.database import Database, Tx
from services.common.postgres_statements import Statements
from tests.conftest import POSTGRES_ADMIN_DSN


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every COMMIT the statement runner sends, in order."""
    sent: list[bytes] = []
    command = Statements.command

    def counting(self: Statements, sql: bytes) -> None:
        if sql == b"COMMIT":
            sent.append(sql)
        command(self, sql)

    monkeypatch.setattr(Statements, "command", counting)
    return sent


@pytest.fixture
def gate(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the test's own that will hold the 'gate' row's lock."""
    with psycopg.connect(postgres_dsn) as connection:
        yield connection


def insert_and_count(n: int) -> Callable[[Tx], int]:
    """Insert row ``n``; the rows this transaction sees after it (the writes before it too)."""

    def work(tx: Tx) -> int:
        tx.execute("INSERT INTO items (id, key) VALUES (?, ?)", (str(n), f"k{n}"))
        row = tx.one("SELECT count(*) AS n FROM items")
        assert row is not None
        return int(row["n"])

    return work


def write(sql: str) -> Callable[[Tx], int]:
    return lambda tx: tx.execute(sql)


async def queued_behind_a_locked_row(
    database: Database, gate: psycopg.Connection[Any], writes: list[Callable[[Tx], Any]]
) -> list[asyncio.Task[Any]]:
    """Start a write that waits for the gate row's lock, queue ``writes`` behind it, then let
    the lock go: the writes queued meanwhile make the next batch."""
    gate.execute("SELECT key FROM items WHERE id = 'gate' FOR UPDATE")  # opens the gate's transaction
    first = asyncio.ensure_future(
        database.transact(write("UPDATE items SET key = 'opened' WHERE id = 'gate'"))
    )
    await wait_for_a_lock_waiter(gate.info.dbname)
    tasks = [asyncio.ensure_future(database.transact(work)) for work in writes]
    await asyncio.sleep(0)  # one turn: every task queues its write
    gate.commit()
    await asyncio.wait([first, *tasks], timeout=30)
    assert first.result() == 1
    return tasks


async def wait_for_a_lock_waiter(database: str) -> None:
    """Until a backend of ``database`` waits for a lock (the first write, blocked by the gate).
    Other tests run beside this one: a lock wait in their databases must not count."""
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            waiting = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                (database,),
            ).fetchone()
            if waiting is not None and waiting[0] > 0:
                return
            await asyncio.sleep(0.01)
    raise AssertionError("the first write never waited for the gate's lock")


async def prepared(postgres_dsn: str) -> Database:
    database = Database("items", postgres_dsn)
    await database.transact(write("CREATE TABLE items (id TEXT PRIMARY KEY, key TEXT NOT NULL)"))
    await database.transact(write("INSERT INTO items (id, key) VALUES ('gate', 'closed')"))
    return database


async def test_postgresql_writes_queued_meanwhile_share_one_transaction_in_call_order(
    postgres_dsn: str, gate: psycopg.Connection[Any], commits: list[bytes]
) -> None:
    """BEGIN and COMMIT were two of a small write's three or four round trips: writes queued
    while one is written go out in one transaction, in the order they were started, each
    seeing the ones before it."""
    database = await prepared(postgres_dsn)
    try:
        before = len(commits)
        tasks = await queued_behind_a_locked_row(database, gate, [insert_and_count(n) for n in range(20)])
        assert [task.result() for task in tasks] == list(range(2, 22))  # 'gate', then one more each
        assert len(commits) - before == 2  # the gate's write alone, then the twenty together
        rows = await database.read(lambda tx: tx.query("SELECT count(*) AS n FROM items"))
        assert rows == [{"n": 21}]
    finally:
        await database.close()


async def test_an_error_in_a_postgresql_batch_sends_each_write_down_the_ordinary_path(
    postgres_dsn: str, gate: psycopg.Connection[Any], commits: list[bytes]
) -> None:
    """A batch has no savepoints: any error rolls it back, and each write runs again alone, so
    each caller gets its own answer and the writes that did nothing wrong still commit."""
    database = await prepared(postgres_dsn)

    def refused_after_its_insert(tx: Tx) -> None:
        tx.execute("INSERT INTO items (id, key) VALUES ('refused', 'k')")
        raise ValueError("refused after its insert")

    def swallows_a_failed_statement(tx: Tx) -> None:
        with contextlib.suppress(psycopg.errors.UniqueViolation):  # aborted all the same
            tx.execute("INSERT INTO items (id, key) VALUES ('a', 'again')")

    try:
        before = len(commits)
        tasks = await queued_behind_a_locked_row(
            database,
            gate,
            [
                write("INSERT INTO items (id, key) VALUES ('a', 'k')"),
                refused_after_its_insert,
                write("INSERT INTO items (id, key) VALUES ('a', 'duplicate')"),
                swallows_a_failed_statement,
                write("INSERT INTO items (id, key) VALUES ('b', 'k')"),
            ],
        )
        assert tasks[0].result() == 1 and tasks[4].result() == 1
        with pytest.raises(ValueError, match="refused after its insert"):
            tasks[1].result()
        with pytest.raises(psycopg.errors.UniqueViolation):
            tasks[2].result()
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            tasks[3].result()
        assert len(commits) - before == 3  # the gate's write, then 'a' and 'b' alone
        rows = await database.read(lambda tx: tx.query("SELECT id, key FROM items ORDER BY id"))
        assert rows == [
            {"id": "a", "key": "k"},
            {"id": "b", "key": "k"},
            {"id": "gate", "key": "opened"},
        ]
    finally:
        await database.close()


async def test_a_write_that_raises_splits_its_batch_and_the_others_still_share_commits(
    postgres_dsn: str, gate: psycopg.Connection[Any], commits: list[bytes]
) -> None:
    """A failing request (a declined payment, a sale's last unit gone) must not turn the writes
    batched with it into a transaction each: the writes before it are batched again, it runs
    alone, and the writes after it join the next batch, in call order throughout."""
    database = await prepared(postgres_dsn)
    refused_runs = 0

    def refused(tx: Tx) -> None:
        nonlocal refused_runs
        refused_runs += 1
        tx.execute("INSERT INTO items (id, key) VALUES ('refused', 'k')")
        raise ValueError("refused after its insert")

    try:
        before = len(commits)
        works = [
            insert_and_count(0),
            insert_and_count(1),
            refused,
            *(insert_and_count(n) for n in range(2, 12)),
        ]
        tasks = await queued_behind_a_locked_row(database, gate, works)
        with pytest.raises(ValueError, match="refused after its insert"):
            tasks[2].result()
        assert refused_runs == 2  # in the batch, then alone for its own answer
        counts = [task.result() for index, task in enumerate(tasks) if index != 2]
        assert counts == list(range(2, 14))  # call order: each saw the gate and the ones before
        # The gate's write alone, the two before the refused one, then the ten after it.
        assert len(commits) - before == 3
    finally:
        await database.close()


async def test_after_many_refused_writes_each_write_of_a_batch_gets_a_savepoint(
    postgres_dsn: str, gate: psycopg.Connection[Any], commits: list[bytes]
) -> None:
    """Splitting runs the writes before a failing one twice, which stops paying when many
    writes fail: a client whose requests are all refused would make everyone's writes dearer.
    Past a share of failing writes, a batch gives each write a savepoint: nothing runs twice,
    and the batch still commits once."""
    database = await prepared(postgres_dsn)
    runs: list[str] = []

    def refused(name: str) -> Callable[[Tx], None]:
        def work(tx: Tx) -> None:
            runs.append(name)
            tx.execute("INSERT INTO items (id, key) VALUES (?, 'k')", (name,))
            raise ValueError(f"{name} refused after its insert")

        return work

    try:
        for n in range(10):  # one client's refused requests, one after another
            with pytest.raises(ValueError):
                await database.transact(refused(f"early-{n}"))
        runs.clear()
        before = len(commits)
        works: list[Callable[[Tx], Any]] = []
        for n in range(6):
            works += [insert_and_count(n), refused(f"late-{n}")]
        tasks = await queued_behind_a_locked_row(database, gate, works)
        assert runs == [f"late-{n}" for n in range(6)]  # each once, in the batch
        for n in range(6):
            with pytest.raises(ValueError, match=f"late-{n} refused"):
                tasks[2 * n + 1].result()
        assert [tasks[2 * n].result() for n in range(6)] == list(range(2, 8))
        assert len(commits) - before == 2  # the gate's write alone, then the batch
    finally:
        await database.close()
