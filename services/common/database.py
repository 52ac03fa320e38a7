"""One service's own database: SQLite (a WAL file, the default) or PostgreSQL (by DSN).

Stores are written as small synchronous functions over a :class:`Tx` and run through
:meth:`Database.transact`, which executes them on a worker thread inside one transaction,
retries them on lock or serialization conflicts after a jittered delay from the mesh's one
backoff (:class:`mesh.resilience.Backoff`, so contending writers spread out instead of
colliding again in step; and, on SQLite, once on a fresh connection when another connection
changed the schema under this one), and turns a lost connection into
``DependencyUnavailable`` naming the database, so callers get UNAVAILABLE, never INTERNAL.
Statements use ``?`` placeholders for both engines.

Reads that change nothing go through :meth:`Database.read`. On SQLite they run on the
calling (event-loop) thread in a deferred transaction on a connection of their own: in WAL
mode a reader never waits for a writer, a one-row read costs microseconds, and the hop to a
worker thread and back cost more CPU than the read itself (callgrind: most of inventory's
servicer cost per ``GetProduct``). Anything unusual (busy, a changed schema) falls back to
the worker-thread path, which handles it. PostgreSQL reads keep the worker threads (a
network round trip must not stall the loop) but run without ``BEGIN`` and ``COMMIT``: each
statement is its own transaction. At PostgreSQL's READ COMMITTED, the level every service
uses, each statement of a transaction takes a new snapshot anyway, so a read-only transaction
saw nothing a statement alone does not, and its two extra round trips were two thirds of a
one-row read's. On PostgreSQL every statement, ``BEGIN`` and ``COMMIT`` included, is one blocking
libpq call on the worker thread, prepared once per connection (:mod:`services.common.postgres_statements`:
psycopg's cursor cost three times the client CPU per transaction).

SQLite allows one writer at a time. The worker threads of one process take turns on a
mutex of their own before ``BEGIN IMMEDIATE``, rather than each meeting SQLITE_BUSY: SQLite's
busy handler sleeps 1, 2, 5 ... 100 ms between tries, so under load the lock sat free while
its waiters slept, and whole orders landed in the latency tail (``bench/orders.py``: CreateOrder
p99 near 0.9 s at p50 0.13 s). Writers in other processes on the same file still meet the
busy timeout, as before.

Writes made through :meth:`Database.transact` are grouped on both engines: those queued while
one batch is written share the next batch's single transaction and COMMIT
(:mod:`services.common.group_commit`). On SQLite each write has a savepoint of its own: a
commit's fsync cost more than the write it ended. On PostgreSQL a batch has no savepoints, and
a write that raises is run again alone while the others are batched anew: BEGIN and COMMIT were
two of a small write's three or four round trips.

A PostgreSQL write waits for a row lock held by another transaction (an operator's open
``psql`` session, another instance mid-batch) for at most ``lock_timeout``: 2 s unless the DSN,
the role or the database sets one of its own. Past it the write fails with UNAVAILABLE naming
the database and the lock. Without a bound one forgotten lock stalled the write for good, and,
as a process's writes go out in call order on one connection, every write queued behind it.
Two seconds is past ``deadlock_timeout`` (1 s by default), so PostgreSQL still breaks a
deadlock between two batches first, and short of the mesh's 5 s default call timeout, so the
caller hears why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import psycopg.errors

from mesh.errors import DependencyUnavailable
from mesh.resilience import Backoff
from services.common.group_commit import GroupCommit, PostgresGroupCommit, SqliteGroupCommit
from services.common.postgres_statements import StalePlan, Statements

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = dict[str, Any]

MAX_CONFLICT_RETRIES = 20
# Conflicts clear in milliseconds (the other writer commits): start small, cap at 0.1 s.
CONFLICT_BACKOFF = Backoff(initial=0.002, multiplier=2.0, maximum=0.1)
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# How long a PostgreSQL statement waits for another transaction's lock (see the module doc).
LOCK_TIMEOUT_MS = 2000
LOCK_WAIT_DETAIL = "a lock held by another transaction outlasted lock_timeout"


class Conflict(Exception):
    """A lock or serialization conflict: the whole transaction is safe to run again."""


@dataclass
class Tx:
    """An open transaction; what store functions receive.

    Statements run on one cursor of the connection (``cursor``, else one made here), not on
    ``connection.execute``: psycopg builds a new cursor for each of those, about 20 us of
    Python per statement (a third of a one-row read's client CPU, measured single-threaded).
    """

    connection: Any
    dialect: str
    cursor: Any = None

    def __post_init__(self) -> None:
        if self.cursor is None:
            self.cursor = self.connection.cursor()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; returns the number of rows it changed."""
        cursor = self.cursor
        cursor.execute(sql, tuple(params))
        return int(cursor.rowcount)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query; rows come back as dicts keyed by column name."""
        cursor = self.cursor
        cursor.execute(sql, tuple(params))
        names = [d[0] for d in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row of a query, or None."""
        rows = self.query(sql, params)
        return rows[0] if rows else None


class PostgresTx(Tx):
    """A PostgreSQL transaction (or, for a read, a run of statements each on its own): every
    statement is one blocking libpq call through :class:`Statements` (its module says why)."""

    def __init__(self, statements: Statements) -> None:
        self.connection = statements.connection
        self.dialect = "postgresql"
        self.cursor = None
        self._statements = statements

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._statements.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._statements.query(sql, params)


class Database:
    """A service's database. Create with :func:`open_database`; close with :meth:`close`."""

    def __init__(
        self,
        name: str,
        url: str,
        workers: int = 4,
        *,
        conflict_backoff: Backoff = CONFLICT_BACKOFF,
        lock_timeout_ms: int = LOCK_TIMEOUT_MS,
    ) -> None:
        """``lock_timeout_ms``: PostgreSQL's lock wait on this database's connections, where the
        DSN, role or database sets none."""
        self.name = name
        self.url = url
        self._conflict_backoff = conflict_backoff
        self._lock_timeout_ms = lock_timeout_ms
        self.dialect = "postgresql" if url.startswith(POSTGRES_SCHEMES) else "sqlite"
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"db-{name}")
        self._reader: sqlite3.Connection | None = None
        self._sqlite_writer = threading.Lock()  # this process's writers take turns (module doc)
        self._group: GroupCommit
        if self.dialect == "sqlite":
            self._group = SqliteGroupCommit(
                self._executor,
                lambda: self._tx_here("sqlite"),
                self._sqlite_writer,
                self._transact_with_retries,
            )
        else:
            self._group = PostgresGroupCommit(
                self._executor,
                lambda: self._statements(self._connection()),
                PostgresTx,
                self._transact_with_retries,
                self._forget_connection,
                self._unavailable,
            )

    @property
    def description(self) -> str:
        """A name for errors and logs that never includes credentials."""
        return f"{self.name} database ({self.dialect})"

    def _unavailable(self, error: BaseException) -> DependencyUnavailable:
        """What a caller hears when PostgreSQL could not do its work: the database by name, and
        why in words that never include the server's message (it may quote row values)."""
        if isinstance(error, psycopg.errors.LockNotAvailable):
            return DependencyUnavailable(self.description, LOCK_WAIT_DETAIL)
        return DependencyUnavailable(self.description, type(error).__name__)

    async def transact(self, work: Callable[[Tx], T]) -> T:
        """Run ``work`` in one transaction on a worker thread; commit if it returns.

        That transaction may be shared with the writes queued with it (group commit: see the
        module docstring), and writes started one after another, without awaiting each, are
        applied in the order they were started.
        """
        return await self._group.write(work)

    async def read(self, work: Callable[[Tx], T]) -> T:
        """Run ``work``, which must not write: on SQLite in one read transaction, on PostgreSQL
        one statement at a time, each its own transaction (see the module docstring)."""
        if self.dialect != "sqlite":
            return await self._on_worker(self._postgres_read, work)
        try:
            return self._read_here(work)
        except sqlite3.Error:
            self._drop_reader()
            return await self.transact(work)

    def _read_here(self, work: Callable[[Tx], T]) -> T:
        reader = self._reader
        if reader is None:
            reader = self._reader = self._connect(busy_timeout_ms=0)  # busy: fall back, never block the loop
        reader.execute("BEGIN")
        try:
            return work(self._tx_on(reader, "sqlite"))
        finally:
            reader.execute("COMMIT")  # a read transaction: ends the snapshot, nothing to write

    async def _on_worker(self, run: Callable[[Callable[[Tx], T]], T], work: Callable[[Tx], T]) -> T:
        """``run(work)`` on a worker thread, its result handed back by one ``call_soon_threadsafe``.

        Lighter than ``loop.run_in_executor``, which chains a concurrent Future to an asyncio
        one through several layers of Python callbacks: that hand-off was most of the event
        loop's share of a PostgreSQL read. As with an executor, work whose caller was
        cancelled before it started is skipped; once started, it runs to its end.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def on_worker() -> None:
            if future.cancelled():
                return
            try:
                result = run(work)
            except BaseException as error:  # handed to the caller, whatever it is
                _hand_back(loop, _fail, future, error)
            else:
                _hand_back(loop, _succeed, future, result)

        self._executor.submit(on_worker)
        return await future

    def _postgres_read(self, work: Callable[[Tx], T]) -> T:
        """``work`` one statement at a time on this thread's connection (see the module doc).

        A connection found dead (a server restart, a terminated backend) is replaced once, and
        statements whose row type a migration changed are prepared anew once (:class:`StalePlan`):
        a read changed nothing, so running it again is always safe.
        """
        for fresh in (False, True):
            try:
                connection = self._connection()
            except psycopg.OperationalError as error:  # the server refuses or is away
                raise self._unavailable(error) from error
            try:
                return work(self._tx_on(connection, "postgresql"))
            except StalePlan:
                if fresh:
                    raise
            except psycopg.OperationalError as error:
                broken = connection.broken or connection.closed
                if broken:
                    self._forget_connection()
                if fresh or not broken:
                    raise self._unavailable(error) from error
        raise AssertionError("unreachable: the second try returns or raises")

    def _drop_reader(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            try:
                reader.close()
            except sqlite3.Error:
                log.debug("error closing the read connection", exc_info=True)

    def transact_sync(self, work: Callable[[Tx], T]) -> T:
        """The same as :meth:`transact`, for tools and tests without an event loop."""
        return self._transact_with_retries(work)

    async def close(self) -> None:
        """Close every connection and stop the worker threads."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._executor.shutdown, True)
        self._drop_reader()
        with self._lock:
            for connection in self._connections:
                try:
                    connection.close()
                except Exception:  # closing a broken connection must not stop shutdown
                    log.debug("error closing connection", exc_info=True)
            self._connections.clear()

    def _transact_with_retries(self, work: Callable[[Tx], T]) -> T:
        for attempt in range(MAX_CONFLICT_RETRIES):
            try:
                return self._transact_once(work)
            except Conflict:
                time.sleep(self._conflict_backoff.delay(attempt))
        raise DependencyUnavailable(self.description, "too many concurrent conflicts")

    def _transact_once(self, work: Callable[[Tx], T]) -> T:
        try:
            connection = self._connection()
            if self.dialect == "sqlite":
                return self._sqlite_tx(connection, work)
            return self._postgres_tx(connection, work)
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise Conflict() from error
            stale = self._schema_changed_under_connection()
            self._forget_connection()
            if stale:
                # Another connection changed the schema (a migration) after this one cached
                # it. SQLite compiles against the cached schema, and a statement naming what
                # only the new schema has fails before the change is noticed: an upsert on a
                # new UNIQUE column gives "ON CONFLICT clause does not match". The transaction
                # was rolled back; a fresh connection reads the current schema.
                raise Conflict() from error
            raise DependencyUnavailable(self.description, str(error)) from error
        except (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected, StalePlan) as error:
            raise Conflict() from error  # StalePlan: statements prepared anew on the next try
        except psycopg.errors.LockNotAvailable as error:
            # Not a conflict to retry: the holder kept its lock past lock_timeout already, and
            # trying again would hold every write queued behind this one that long once more.
            # The transaction was rolled back; the connection is sound.
            raise self._unavailable(error) from error
        except psycopg.OperationalError as error:
            self._forget_connection()
            raise self._unavailable(error) from error

    def _sqlite_tx(self, connection: sqlite3.Connection, work: Callable[[Tx], T]) -> T:
        with self._sqlite_writer:
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = work(self._tx_on(connection, "sqlite"))
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result

    def _postgres_tx(self, connection: psycopg.Connection[Any], work: Callable[[Tx], T]) -> T:
        statements = self._statements(connection)
        try:
            statements.command(b"BEGIN")
        except psycopg.OperationalError:
            # The idle connection died (server restart, terminated backend). Nothing was
            # sent for this transaction yet, so one fresh connection may safely try again.
            self._forget_connection()
            statements = self._statements(self._connection())
            statements.command(b"BEGIN")
        try:
            result = work(PostgresTx(statements))
            if statements.in_failed_transaction:
                # The work caught a statement's error and went on: the server would turn the
                # COMMIT into a ROLLBACK, so none of it may be reported as written.
                raise psycopg.errors.InFailedSqlTransaction("a statement of the transaction failed")
        except BaseException:
            if statements.usable:
                try:
                    statements.command(b"ROLLBACK")
                except psycopg.Error:
                    log.debug("error rolling back", exc_info=True)
            raise
        statements.command(b"COMMIT")
        return result

    def _tx_here(self, dialect: str) -> Tx:
        """A Tx on this thread's connection and its cursor."""
        return self._tx_on(self._connection(), dialect)

    def _tx_on(self, connection: Any, dialect: str) -> Tx:
        """A Tx on ``connection`` with this thread's cursor (or statements) for it."""
        if dialect == "postgresql":
            return PostgresTx(self._statements(connection))
        return Tx(connection, dialect, self._cursor(connection))

    def _statements(self, connection: psycopg.Connection[Any]) -> Statements:
        """This thread's statement runner on ``connection``, made once per connection (it
        keeps the statements prepared on it)."""
        statements: Statements | None = getattr(self._local, "statements", None)
        if statements is None or statements.connection is not connection:
            statements = self._local.statements = Statements(connection)
        return statements

    def _cursor(self, connection: Any) -> Any:
        """This thread's cursor on ``connection``, made once per connection and kept with it."""
        cursor = getattr(self._local, "cursor", None)
        if cursor is None or cursor.connection is not connection:
            cursor = self._local.cursor = connection.cursor()
        return cursor

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._connect()
            if self.dialect == "sqlite":
                self._local.schema_version = connection.execute("PRAGMA schema_version").fetchone()[0]
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def _schema_changed_under_connection(self) -> bool:
        """Whether the SQLite schema changed since this thread's connection was opened."""
        connection = getattr(self._local, "connection", None)
        opened_with = getattr(self._local, "schema_version", None)
        if connection is None or opened_with is None:
            return False
        try:
            return bool(connection.execute("PRAGMA schema_version").fetchone()[0] != opened_with)
        except sqlite3.Error:
            return False

    def _forget_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = self._local.cursor = self._local.statements = None
        if connection is not None:
            with self._lock:
                if connection in self._connections:
                    self._connections.remove(connection)
            try:
                connection.close()
            except Exception:
                log.debug("error closing a broken connection", exc_info=True)

    def _connect(self, busy_timeout_ms: int = 10000) -> Any:
        if self.dialect == "postgresql":
            server = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            try:  # one round trip per connection; a lock_timeout the DSN, role or database set wins
                server.execute(
                    "SELECT set_config('lock_timeout', %s, false) WHERE current_setting('lock_timeout') = '0'",
                    (f"{int(self._lock_timeout_ms)}ms",),
                )
            except BaseException:
                server.close()
                raise
            return server
        path = Path(self.url.removeprefix("sqlite:///").removeprefix("sqlite://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, isolation_level=None, timeout=10, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        # FULL: an acknowledged commit survives power loss, not only a process crash.
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        connection.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        return connection


def _hand_back(loop: asyncio.AbstractEventLoop, settle: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle, *args)


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # its caller was cancelled meanwhile
        future.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def split_statements(script: str) -> Iterable[str]:
    """Statements of a migration file: separated by ';' at the end of a line."""
    statement: list[str] = []
    for line in script.splitlines():
        if line.strip().startswith("--"):
            continue
        statement.append(line)
        if line.rstrip().endswith(";"):
            text = "\n".join(statement).strip().rstrip(";").strip()
            if text:
                yield text
            statement = []
    tail = "\n".join(statement).strip()
    if tail:
        yield tail
