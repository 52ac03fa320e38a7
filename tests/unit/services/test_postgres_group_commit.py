"""PostgresGroupCommit's rules for a lost connection and a split batch, on a scripted runner.

The batch paths that a real server can show are tested against one
(tests/integration/services/test_group_commit_postgres.py). A connection lost exactly while a
COMMIT is out is not one of them, and it is the case that must never run a write twice.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg

from mesh.errors import DependencyUnavailable
from services.common.group_commit import PostgresGroupCommit


class ScriptedStatements:
    """Answers BEGIN, COMMIT and ROLLBACK; ``failing`` commands raise OperationalError."""

    def __init__(self, failing: set[bytes]) -> None:
        self.failing = failing
        self.sent: list[bytes] = []
        self.in_failed_transaction = False
        self.usable = True

    def command(self, sql: bytes) -> None:
        self.sent.append(sql)
        if sql in self.failing:
            self.usable = False
            raise psycopg.OperationalError(f"server closed the connection during {sql.decode()}")


class Harness:
    """A group commit over scripted statements, whose first batch holds every write queued."""

    def __init__(self, failing: set[bytes]) -> None:
        self.statements = ScriptedStatements(failing)
        self.alone: list[Callable[[Any], Any]] = []
        self.down: set[Callable[[Any], Any]] = set()  # writes the ordinary path finds the server away for
        self.lost = 0
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.group = PostgresGroupCommit(
            self.executor,
            lambda: self.statements,  # type: ignore[arg-type,return-value]
            lambda statements: statements,  # type: ignore[arg-type,return-value]
            self._one_at_a_time,
            self._lose,
            lambda error: DependencyUnavailable("items database (postgresql)", type(error).__name__),
        )

    def _one_at_a_time(self, work: Callable[[Any], Any]) -> Any:
        self.alone.append(work)
        if work in self.down:
            raise DependencyUnavailable("items database (postgresql)", "OperationalError")
        return work(None)

    def _lose(self) -> None:
        self.lost += 1

    async def run(self, works: list[Callable[[Any], Any]]) -> list[Any]:
        held = threading.Event()
        self.executor.submit(held.wait)  # the drain starts only once every write is queued
        tasks = [asyncio.ensure_future(self.group.write(work)) for work in works]
        await asyncio.sleep(0)
        held.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        self.executor.shutdown()
        return results


async def test_a_batch_whose_connection_is_lost_during_commit_runs_nothing_again() -> None:
    """It may have committed: every caller hears UNAVAILABLE, and no write runs a second time."""
    harness = Harness(failing={b"COMMIT"})
    ran: list[int] = []
    results = await harness.run([lambda tx, n=n: ran.append(n) for n in range(3)])
    assert ran == [0, 1, 2]  # once each, in the batch
    assert harness.alone == []
    assert all(isinstance(result, DependencyUnavailable) for result in results)
    assert "items database (postgresql)" in str(results[0])
    assert harness.lost == 1  # the connection is not used again
    assert harness.statements.sent == [b"BEGIN", b"COMMIT"]
    assert harness.group.commits == 0


async def test_a_batch_that_cannot_begin_runs_each_write_alone_on_a_fresh_connection() -> None:
    """Nothing of the batch ran, so each write goes down the ordinary path (which connects anew)."""
    harness = Harness(failing={b"BEGIN"})
    results = await harness.run([lambda tx, n=n: n for n in range(3)])
    assert results == [0, 1, 2]
    assert len(harness.alone) == 3
    assert harness.lost == 1


def counting(attempts: list[int], n: int) -> Callable[[Any], int]:
    def work(tx: Any) -> int:
        attempts.append(n)
        return n

    return work


async def test_a_write_that_raises_splits_the_batch_around_it() -> None:
    """The writes before it are batched again, it runs alone, the writes after it make the
    next batch: three transactions, not one per write."""
    harness = Harness(failing=set())
    attempts: list[int] = []

    def refuse(tx: Any) -> None:
        raise ValueError("refused")

    results = await harness.run([counting(attempts, 0), counting(attempts, 1), refuse, counting(attempts, 3)])
    assert results[:2] == [0, 1] and results[3] == 3
    assert isinstance(results[2], ValueError)
    assert attempts == [0, 1, 0, 1, 3]  # 0 and 1 in the rolled-back batch and again; 3 once
    assert harness.alone[0] is refuse and len(harness.alone) == 2  # 3, a batch of one, alone too
    assert harness.statements.sent == [b"BEGIN", b"ROLLBACK", b"BEGIN", b"COMMIT"]


async def test_a_connection_lost_during_a_write_batches_the_writes_before_it_anew() -> None:
    """Nothing was committed: the writes before it run again in a batch (on a fresh connection),
    and the one whose statement met the lost connection takes the ordinary path."""
    harness = Harness(failing=set())
    attempts: list[int] = []

    def lost(tx: Any) -> None:
        harness.statements.usable = False
        raise psycopg.OperationalError("server closed the connection")

    harness.down.add(lost)
    results = await harness.run([counting(attempts, 0), counting(attempts, 1), lost])
    assert results[:2] == [0, 1]
    assert isinstance(results[2], DependencyUnavailable)
    assert attempts == [0, 1, 0, 1]
    assert harness.lost == 1  # the connection that could not even roll back is not used again
    assert harness.statements.sent == [b"BEGIN", b"BEGIN", b"COMMIT"]


async def test_a_batch_of_one_takes_the_ordinary_path() -> None:
    harness = Harness(failing=set())
    results = await harness.run([lambda tx: "done"])
    assert results == ["done"]
    assert harness.statements.sent == []  # no BEGIN of the batch's own
    assert len(harness.alone) == 1
    assert harness.group.commits == 1
