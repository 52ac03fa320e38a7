"""Group commit: one COMMIT for every write a process queued meanwhile, on SQLite and PostgreSQL.

Why, on SQLite: with ``synchronous=FULL`` every commit fsyncs the WAL. Measured on this
project's 2-core machine, a commit costs ~120 us of CPU and ~0.45 ms of wall time, more than
the small write it ends, and SQLite admits one writer at a time, so under load the write lock
sat in fsync while the next writes queued behind it.

Why, on PostgreSQL: every statement is a round trip, and a transaction adds two (BEGIN and
COMMIT) to a write of one or two statements: each a wake-up of the worker thread, and work
for the server (a commit record and its WAL flush). Writes that share a transaction share
those two. Measured on 16 writers of a SELECT and an UPDATE each, the client's CPU per write
went from ~270 to ~165 us and the server's from ~260 to ~170 us.

The writes that arrive while a batch is being written wait for the next batch, which runs
them one after another inside one transaction on one connection, and commits once.

What each write keeps: it sees the writes before it (they ran first, in one connection); a
write that raises gets its own error while the rest commit; and no caller hears of success
before the COMMIT returned, so an acknowledged write is exactly as durable as before. A write
is safe to run again because a rolled-back transaction left nothing behind (the same contract
conflict retries rely on). The engines differ in how a batch gets there:

- SQLite (:class:`SqliteGroupCommit`) runs each write in a SAVEPOINT of its own, which costs
  no round trip: a write that raises is rolled back to it alone. Anything unusual (a SQLite
  ``OperationalError``: busy, a changed schema, a broken connection, a failed COMMIT) rolls
  the whole batch back and runs its writes again one at a time on the ordinary path, which
  knows how to retry or report each.
- PostgreSQL (:class:`PostgresGroupCommit`) would pay two round trips per write for
  savepoints, so it uses none. When a write raises (its own error, a conflict, a failed
  statement it swallowed), the batch is rolled back and split there (:class:`SplitAt`): the
  writes before it make a batch again, it runs alone on the ordinary path, which answers or
  retries it, and the writes after it go back to the head of the queue. Call order holds, and
  a request that fails (a declined payment, a sale's last unit gone) costs its batch one
  rollback. When many recent writes raised (a client sending requests that are all refused),
  each write of a batch gets a savepoint instead, as on SQLite, so however many such requests
  one client sends, the others' writes still share commits. What is no one write's doing
  (BEGIN failing, a COMMIT the server refused) runs every write of the batch alone. The one
  batch never run again is one whose connection was lost while its COMMIT was out: it may
  have committed, so every caller hears UNAVAILABLE, as each would have alone. Nor does a
  write that waited ``lock_timeout`` for a lock held outside the batch run again: its caller
  hears UNAVAILABLE at once. A batch of one takes the ordinary path at once, as there is
  nothing to share.

A write whose caller was cancelled before its batch began is skipped, as a job not yet started
on an executor is.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import psycopg.errors

from services.common.postgres_statements import StalePlan

if TYPE_CHECKING:  # database.py imports this module
    from services.common.database import Tx
    from services.common.postgres_statements import Statements

T = TypeVar("T")

MAX_BATCH = 64  # bounds how long the last write of a batch waits for the ones before it
SAVEPOINT = "tsunagu_write"
# PostgreSQL: the share of recent batched writes that raised above which each write gets a
# savepoint (see PostgresGroupCommit), and each write's weight in that running share.
GUARDED_ABOVE = 0.15
FAILING_WEIGHT = 0.05
# What a write's savepoint does not answer on PostgreSQL: the connection's trouble, and the
# conflicts the ordinary path retries.
_NOT_THE_WRITES_OWN = (
    psycopg.OperationalError,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    StalePlan,
)


@dataclass
class _Write:
    """One queued write, the future its caller awaits and that caller's loop."""

    work: Callable[[Tx], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


@dataclass
class _Outcome:
    write: _Write
    result: Any = None
    error: BaseException | None = None


class RunAlone(Exception):
    """A batch was rolled back for a reason that is not one write's answer: each of its writes
    runs again alone, on the ordinary path."""


class SplitAt(Exception):
    """Write ``index`` of a batch raised, and the batch was rolled back for it.

    The writes before it did nothing wrong and make a batch again; it runs alone on the
    ordinary path (or its caller gets ``answer``, when running it again could only repeat
    the wait that failed it); the writes after it go back to the head of the queue, ahead of
    anything queued since. Call order holds, and one failing write costs its batch one
    rollback instead of a transaction for every write in it.
    """

    def __init__(self, index: int, answer: BaseException | None = None) -> None:
        super().__init__()
        self.index = index
        self.answer = answer


class GroupCommit:
    """Queues writes and commits them in batches on one executor thread at a time. How a batch
    is written is the engine's: :class:`SqliteGroupCommit`, :class:`PostgresGroupCommit`."""

    def __init__(
        self,
        executor: Executor,
        one_at_a_time: Callable[[Callable[[Tx], Any]], Any],
        max_batch: int = MAX_BATCH,
    ) -> None:
        """``one_at_a_time``: the ordinary path, where the writes of a batch that could not be
        written go one by one."""
        self._executor = executor
        self._one_at_a_time = one_at_a_time
        self._max_batch = max_batch
        self._pending: deque[_Write] = deque()
        self._guard = threading.Lock()
        self._draining = False
        self.commits = 0  # batches committed: how much grouping happened (tests, benches)

    async def write(self, work: Callable[[Tx], T]) -> T:
        """Run ``work`` in the next batch; its result once that batch committed."""
        loop = asyncio.get_running_loop()
        write = _Write(work, loop.create_future(), loop)
        with self._guard:
            self._pending.append(write)
            start, self._draining = not self._draining, True
        if start:
            try:
                self._executor.submit(self._drain)
            except RuntimeError:  # the executor was shut down: the database is closed
                with self._guard:
                    self._draining = False
                    self._pending.remove(write)
                raise
        result: T = await write.future
        return result

    def _take(self) -> list[_Write]:
        """The next batch (writes whose callers are still waiting); [] ends the drain."""
        with self._guard:
            batch: list[_Write] = []
            while self._pending and len(batch) < self._max_batch:
                write = self._pending.popleft()
                if not write.future.cancelled():
                    batch.append(write)
            if not batch:
                self._draining = False
            return batch

    def _drain(self) -> None:
        while batch := self._take():
            try:
                outcomes = self._write(batch)
            except BaseException as error:  # a bug here must not leave callers waiting forever
                outcomes = [_Outcome(write, error=error) for write in batch]
            self._settle(outcomes)

    def _write(self, batch: list[_Write]) -> list[_Outcome]:
        """The outcomes of ``batch``, or of the part of it written now (:class:`SplitAt`)."""
        try:
            return self._write_batch(batch)
        except RunAlone:
            return [self._alone(write) for write in batch]
        except SplitAt as split:
            failed = batch[split.index]
            self._requeue(batch[split.index + 1 :])
            outcomes = self._write(batch[: split.index]) if split.index else []
            if split.answer is not None:
                outcomes.append(_Outcome(failed, error=split.answer))
            else:
                outcomes.append(self._alone(failed))
            return outcomes

    def _requeue(self, writes: list[_Write]) -> None:
        """Put ``writes`` back at the head of the queue, in their order (this drain takes them next)."""
        with self._guard:
            self._pending.extendleft(reversed(writes))

    def _write_batch(self, batch: list[_Write]) -> list[_Outcome]:
        """Every write of ``batch`` and one COMMIT: each write's outcome. RunAlone sends the
        writes down the ordinary path one at a time instead; SplitAt splits the batch."""
        raise NotImplementedError

    def _alone(self, write: _Write) -> _Outcome:
        """One write on the ordinary path; whatever it raises is its caller's alone (the writes
        before it may have committed, so nothing here may fail the whole batch)."""
        try:
            return _Outcome(write, self._one_at_a_time(write.work))
        except BaseException as error:
            return _Outcome(write, error=error)

    @staticmethod
    def _settle(outcomes: list[_Outcome]) -> None:
        """Hand every outcome to its caller's loop: one wake-up per loop, not per write."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome.write.loop, []).append(outcome)
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, settled)


class SqliteGroupCommit(GroupCommit):
    """A batch is one SQLite transaction, each write in a savepoint of its own."""

    def __init__(
        self,
        executor: Executor,
        transaction: Callable[[], Tx],
        writer: threading.Lock,
        one_at_a_time: Callable[[Callable[[Tx], Any]], Any],
        max_batch: int = MAX_BATCH,
    ) -> None:
        """``transaction``: a Tx over the calling thread's write connection; ``writer``: the
        process's SQLite write mutex."""
        super().__init__(executor, one_at_a_time, max_batch)
        self._transaction = transaction
        self._writer = writer

    def _write_batch(self, batch: list[_Write]) -> list[_Outcome]:
        try:
            return self._in_one_transaction(batch)
        except sqlite3.OperationalError as error:
            raise RunAlone() from error

    def _in_one_transaction(self, batch: list[_Write]) -> list[_Outcome]:
        tx = self._transaction()
        connection = tx.connection
        outcomes: list[_Outcome] = []
        with self._writer:
            connection.execute("BEGIN IMMEDIATE")
            try:
                for write in batch:
                    connection.execute(f"SAVEPOINT {SAVEPOINT}")
                    try:
                        result = write.work(tx)
                    except sqlite3.OperationalError:
                        raise  # the batch's business: the ordinary path sorts it out
                    except Exception as error:
                        connection.execute(f"ROLLBACK TO {SAVEPOINT}")
                        connection.execute(f"RELEASE {SAVEPOINT}")
                        outcomes.append(_Outcome(write, error=error))
                        continue
                    connection.execute(f"RELEASE {SAVEPOINT}")
                    outcomes.append(_Outcome(write, result))
                connection.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                raise
        self.commits += 1
        return outcomes


class PostgresGroupCommit(GroupCommit):
    """A batch is one PostgreSQL transaction, without savepoints while writes rarely fail.

    A savepoint and its release are two round trips, which doubled a small write's cost
    (measured: ~65 against ~130 us of client CPU per write, and the same on the server), so
    batches go without and a write that raises splits its batch (:class:`SplitAt`). That
    costs the writes before it a second run, which stops paying when many writes fail (one in
    five, measured): a client whose requests are all refused would make everyone's writes dearer.
    So the share of recent writes that raised is kept, and above :data:`GUARDED_ABOVE` each
    write of a batch gets a savepoint, as on SQLite, and its error is its answer alone.
    """

    def __init__(
        self,
        executor: Executor,
        statements: Callable[[], Statements],
        tx_of: Callable[[Statements], Tx],
        one_at_a_time: Callable[[Callable[[Tx], Any]], Any],
        lost: Callable[[], None],
        unavailable: Callable[[BaseException], Exception],
        max_batch: int = MAX_BATCH,
    ) -> None:
        """``statements``: the calling thread's statement runner on its connection; ``tx_of``:
        the Tx the writes get; ``lost``: forgets the calling thread's connection;
        ``unavailable``: the error for a caller whose batch lost its connection mid-COMMIT, or
        whose write waited past lock_timeout."""
        super().__init__(executor, one_at_a_time, max_batch)
        self._statements = statements
        self._tx_of = tx_of
        self._lost = lost
        self._unavailable = unavailable
        self.failing_share = 0.0  # of recent writes, the running share that raised

    def _note(self, failed: bool) -> None:
        self.failing_share += FAILING_WEIGHT * (float(failed) - self.failing_share)

    def _write_batch(self, batch: list[_Write]) -> list[_Outcome]:
        if len(batch) == 1:  # nothing to share: the ordinary path, as before
            outcome = self._alone(batch[0])
            self._note(outcome.error is not None)
            if outcome.error is None:
                self.commits += 1
            return [outcome]
        try:
            statements = self._statements()
            statements.command(b"BEGIN")
        except psycopg.OperationalError as error:
            self._lost()  # refused, or the idle connection died: the ordinary path connects anew
            raise RunAlone() from error
        guarded = self.failing_share > GUARDED_ABOVE
        index = 0
        outcomes: list[_Outcome] = []
        try:
            tx = self._tx_of(statements)
            for index, write in enumerate(batch):
                if guarded:
                    outcomes.append(self._in_savepoint(statements, tx, write))
                    continue
                outcomes.append(_Outcome(write, write.work(tx)))
                if statements.in_failed_transaction:  # the write swallowed a failed statement
                    raise SplitAt(index)
                self._note(False)
        except SplitAt:
            self._note(True)
            self._roll_back(statements)
            raise
        except psycopg.errors.LockNotAvailable as error:
            # This write waited lock_timeout for a lock held outside the batch. Alone it would
            # wait as long again, holding up every write behind it: it gets its answer now.
            self._roll_back(statements)
            raise SplitAt(index, self._unavailable(error)) from error
        except Exception as error:  # this write's own error, or a statement of it refused
            self._note(True)
            self._roll_back(statements)
            raise SplitAt(index) from error
        except BaseException:
            self._roll_back(statements)
            raise
        try:
            statements.command(b"COMMIT")
        except psycopg.OperationalError as error:
            # The connection went while the COMMIT was out: the batch may have committed, so
            # none of it may run again. Each caller hears what it would have heard alone.
            self._lost()
            return [_Outcome(write, error=self._unavailable(error)) for write in batch]
        except psycopg.Error as error:  # refused by the server: the batch was rolled back
            raise RunAlone() from error
        self.commits += 1
        return outcomes

    def _in_savepoint(self, statements: Statements, tx: Tx, write: _Write) -> _Outcome:
        """``write`` inside a savepoint of its own: its error (not one of
        :data:`_NOT_THE_WRITES_OWN`, which the batch handles) undoes it alone."""
        statements.command(b"SAVEPOINT " + SAVEPOINT.encode())
        try:
            result = write.work(tx)
            if statements.in_failed_transaction:  # it swallowed a failed statement
                raise psycopg.errors.InFailedSqlTransaction("a statement of the transaction failed")
        except _NOT_THE_WRITES_OWN:
            raise
        except Exception as error:
            statements.command(b"ROLLBACK TO SAVEPOINT " + SAVEPOINT.encode())
            self._note(True)
            return _Outcome(write, error=error)
        statements.command(b"RELEASE SAVEPOINT " + SAVEPOINT.encode())
        self._note(False)
        return _Outcome(write, result)

    def _roll_back(self, statements: Statements) -> None:
        if statements.usable:
            try:
                statements.command(b"ROLLBACK")
                return
            except psycopg.Error:
                pass
        self._lost()  # a connection that cannot even roll back is not used again


def _resolve(outcomes: list[_Outcome]) -> None:
    for outcome in outcomes:
        future = outcome.write.future
        if future.done():  # its caller was cancelled meanwhile
            continue
        if outcome.error is not None:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome.result)
