"""services.common.database on real SQLite files: one connection sees another's schema change."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mesh.errors import DependencyUnavailable
from mesh.resilience import Backoff
from services.common.database import MAX_CONFLICT_RETRIES, Database, Tx
from tests.support.sqlite_commits import counting_commits

REBUILD_WITH_UNIQUE = (
    "CREATE TABLE items_v2 (id TEXT PRIMARY KEY, key TEXT NOT NULL UNIQUE)",
    "INSERT INTO items_v2 SELECT id, key FROM items",
    "DROP TABLE items",
    "ALTER TABLE items_v2 RENAME TO items",
)
UPSERT = "INSERT INTO items (id, key) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    made = Database("items", str(tmp_path / "items.sqlite3"))
    yield made
    asyncio.run(made.close())


def run(*statements: str) -> Callable[[Tx], None]:
    def work(tx: Tx) -> None:
        for statement in statements:
            tx.execute(statement)

    return work


def in_another_thread(database: Database, work: Callable[[Tx], None]) -> None:
    """Run a transaction on another thread, hence on another of the database's connections."""
    failures: list[BaseException] = []

    def target() -> None:
        try:
            database.transact_sync(work)
        except BaseException as error:  # handed to the test's thread
            failures.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert not thread.is_alive() and not failures, failures


def test_an_upsert_on_a_key_made_unique_by_another_connections_migration(database: Database) -> None:
    database.transact_sync(run("CREATE TABLE items (id TEXT PRIMARY KEY, key TEXT NOT NULL)"))
    assert database.transact_sync(lambda tx: tx.query("SELECT * FROM items")) == []  # schema cached
    in_another_thread(database, run(*REBUILD_WITH_UNIQUE))
    # This thread's connection still holds the old schema, where key is not unique.
    assert database.transact_sync(lambda tx: tx.execute(UPSERT, ("1", "k"))) == 1
    assert database.transact_sync(lambda tx: tx.execute(UPSERT, ("2", "k"))) == 0
    assert database.transact_sync(lambda tx: tx.query("SELECT id, key FROM items")) == [
        {"id": "1", "key": "k"}
    ]


def test_an_error_not_caused_by_a_schema_change_is_unavailable_naming_the_database(
    database: Database,
) -> None:
    with pytest.raises(DependencyUnavailable, match="items database"):
        database.transact_sync(lambda tx: tx.query("SELECT * FROM no_such_table"))


def test_a_conflict_is_retried_after_a_backoff_delay_until_it_clears(tmp_path: Path) -> None:
    draws: list[int] = []
    backoff = Backoff(initial=0.001, maximum=0.001, rng=lambda: draws.append(1) or 0.0)
    database = Database("items", str(tmp_path / "items.sqlite3"), conflict_backoff=backoff)
    tries: list[int] = []

    def locked(times: int) -> Callable[[Tx], str]:
        def work(tx: Tx) -> str:
            tries.append(1)
            if len(tries) <= times:
                raise sqlite3.OperationalError("database is locked")
            return "done"

        return work

    try:
        assert database.transact_sync(locked(2)) == "done"
        assert (len(tries), len(draws)) == (3, 2)  # one backoff draw before each retry
        tries.clear()
        with pytest.raises(DependencyUnavailable, match="too many concurrent conflicts"):
            database.transact_sync(locked(MAX_CONFLICT_RETRIES))
        assert len(tries) == MAX_CONFLICT_RETRIES and len(draws) == 2 + MAX_CONFLICT_RETRIES
    finally:
        asyncio.run(database.close())


def test_a_sqlite_read_runs_on_the_callers_thread_and_sees_committed_writes(database: Database) -> None:
    database.transact_sync(run("CREATE TABLE items (id TEXT PRIMARY KEY, key TEXT NOT NULL)"))
    in_another_thread(database, run("INSERT INTO items VALUES ('a', 'k1')"))

    async def read() -> tuple[list[dict[str, object]], int]:
        return await database.read(lambda tx: (tx.query("SELECT * FROM items"), threading.get_ident()))

    rows, thread = asyncio.run(read())
    assert rows == [{"id": "a", "key": "k1"}]
    assert thread == threading.get_ident()  # no hop to a worker thread


def test_a_sqlite_read_is_not_blocked_by_an_open_write_and_does_not_see_it(
    database: Database, tmp_path: Path
) -> None:
    database.transact_sync(run("CREATE TABLE items (id TEXT PRIMARY KEY, key TEXT NOT NULL)"))
    writer = sqlite3.connect(tmp_path / "items.sqlite3", isolation_level=None, timeout=0)
    try:
        writer.execute("BEGIN IMMEDIATE")
        writer.execute("INSERT INTO items VALUES ('b', 'k2')")

        rows = asyncio.run(database.read(lambda tx: tx.query("SELECT * FROM items")))
        assert rows == []
        writer.execute("COMMIT")
        rows = asyncio.run(database.read(lambda tx: tx.query("SELECT id FROM items")))
        assert rows == [{"id": "b"}]
    finally:
        writer.close()


def test_a_sqlite_read_that_fails_here_is_answered_by_the_worker_path(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Busy or a changed schema on the loop thread: the worker path (with its retries) answers."""
    database.transact_sync(run("CREATE TABLE items (id TEXT PRIMARY KEY, key TEXT NOT NULL)"))
    database.transact_sync(run("INSERT INTO items VALUES ('c', 'k3')"))
    asyncio.run(database.read(lambda tx: tx.one("SELECT 1 AS one")))  # the read connection is open
    stale = database._reader
    threads: list[int] = []

    def busy(work: Callable[[Tx], object]) -> object:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(database, "_read_here", busy)

    def work(tx: Tx) -> list[dict[str, object]]:
        threads.append(threading.get_ident())
        return tx.query("SELECT key FROM items")

    assert asyncio.run(database.read(work)) == [{"key": "k3"}]
    assert threads and threads[0] != threading.get_ident()  # answered on a worker thread
    assert stale is not None and database._reader is None  # the failed connection is dropped
    with pytest.raises(sqlite3.ProgrammingError):
        stale.execute("SELECT 1")  # closed


def test_sqlite_writers_of_one_process_queue_for_the_write_lock_instead_of_meeting_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers on the database's worker threads take turns in the process, so none of them
    meets SQLITE_BUSY: SQLite's busy handler sleeps 1, 2, 5 ... 100 ms between tries, which
    under load left a free write lock idle and put whole orders in the latency tail.

    The connections here fail at once when busy (busy_timeout 0), so every collision would
    surface as a conflict; the work yields inside its transaction to make collisions likely.
    """
    connect = Database._connect
    monkeypatch.setattr(Database, "_connect", lambda self, busy_timeout_ms=0: connect(self, 0))
    database = Database("items", str(tmp_path / "items.sqlite3"), workers=8)
    conflicts: list[float] = []
    monkeypatch.setattr("services.common.database.time.sleep", lambda seconds: conflicts.append(seconds))

    def insert(n: int) -> Callable[[Tx], None]:
        def work(tx: Tx) -> None:
            tx.execute("INSERT INTO items VALUES (?, ?)", (str(n), f"k{n}"))
            threading.Event().wait(0.001)  # hold the transaction open: let another writer try
            tx.execute("UPDATE items SET key = key || '!' WHERE id = ?", (str(n),))

        return work

    async def write_concurrently() -> int:
        await database.transact(run("CREATE TABLE items (id TEXT PRIMARY KEY, key TEXT NOT NULL)"))
        await asyncio.gather(*(database.transact(insert(n)) for n in range(64)))
        rows = await database.read(lambda tx: tx.query("SELECT key FROM items WHERE key LIKE '%!'"))
        await database.close()
        return len(rows)

    assert asyncio.run(write_concurrently()) == 64
    assert conflicts == []


async def _queued_behind_another_writer(path: Path, writes: Callable[[], list[asyncio.Task[object]]]) -> None:
    """Start ``writes`` while another connection holds the file's write lock, then let go:
    the first batch waits in BEGIN IMMEDIATE while the rest queue up behind it."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    tasks = writes()
    await asyncio.sleep(0)  # one turn: every task queues its write and waits for it
    blocker.execute("COMMIT")
    blocker.close()
    await asyncio.wait(tasks)


def test_sqlite_writes_queued_meanwhile_share_one_commit_and_each_keeps_its_own_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit's fsync costs more than a small write: writes that queue while one is written
    go out together under one COMMIT, each in a savepoint, so one failing write is undone alone."""
    path = tmp_path / "items.sqlite3"
    database = Database("items", str(path))

    def insert(n: int, then_fail: bool = False) -> Callable[[Tx], int]:
        def work(tx: Tx) -> int:
            tx.execute("INSERT INTO items VALUES (?, ?)", (str(n), f"k{n}"))
            if then_fail:
                raise ValueError(f"write {n} refused after its insert")
            return n

        return work

    commits = counting_commits(monkeypatch)

    async def scenario() -> tuple[list[asyncio.Task[object]], list[dict[str, object]], int]:
        await database.transact(run("CREATE TABLE items (id TEXT PRIMARY KEY, key TEXT NOT NULL)"))
        tasks: list[asyncio.Task[object]] = []
        created = len(commits)

        def writes() -> list[asyncio.Task[object]]:
            for n in range(20):
                tasks.append(asyncio.ensure_future(database.transact(insert(n, then_fail=n == 7))))
            tasks.append(asyncio.ensure_future(database.transact(insert(3))))  # a duplicate key
            return tasks

        await _queued_behind_another_writer(path, writes)
        batches = len(commits) - created
        rows = await database.read(lambda tx: tx.query("SELECT id FROM items ORDER BY CAST(id AS INTEGER)"))
        await database.close()
        return tasks, rows, batches

    tasks, rows, batches = asyncio.run(scenario())
    assert [task.result() for n, task in enumerate(tasks[:20]) if n != 7] == [n for n in range(20) if n != 7]
    with pytest.raises(ValueError, match="write 7 refused"):
        tasks[7].result()
    with pytest.raises(sqlite3.IntegrityError):
        tasks[20].result()
    assert rows == [{"id": str(n)} for n in range(20) if n != 7]  # 7's insert was rolled back alone
    assert batches in (1, 2)  # 21 writes: the one the first batch took, then the rest together


def test_a_sqlite_error_in_a_batch_sends_its_writes_one_at_a_time_down_the_ordinary_path(
    tmp_path: Path,
) -> None:
    """An OperationalError inside a batch rolls the batch back; each write then runs alone, so
    the broken one is UNAVAILABLE naming the database, as ever, and the others still commit."""
    path = tmp_path / "items.sqlite3"
    database = Database("items", str(path))

    async def scenario() -> tuple[list[asyncio.Task[object]], list[dict[str, object]]]:
        await database.transact(run("CREATE TABLE items (id TEXT PRIMARY KEY, key TEXT NOT NULL)"))
        tasks: list[asyncio.Task[object]] = []

        def writes() -> list[asyncio.Task[object]]:
            tasks.append(asyncio.ensure_future(database.transact(run("INSERT INTO items VALUES ('a', 'k')"))))
            tasks.append(
                asyncio.ensure_future(database.transact(run("INSERT INTO no_such_table VALUES (1)")))
            )
            tasks.append(asyncio.ensure_future(database.transact(run("INSERT INTO items VALUES ('b', 'k')"))))
            return tasks

        await _queued_behind_another_writer(path, writes)
        rows = await database.read(lambda tx: tx.query("SELECT id FROM items ORDER BY id"))
        await database.close()
        return tasks, rows

    tasks, rows = asyncio.run(scenario())
    assert tasks[0].result() is None and tasks[2].result() is None
    with pytest.raises(DependencyUnavailable, match="items database"):
        tasks[1].result()
    assert rows == [{"id": "a"}, {"id": "b"}]
