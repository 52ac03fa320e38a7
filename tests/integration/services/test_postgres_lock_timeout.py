"""A PostgreSQL write waits for a lock held elsewhere for at most lock_timeout, then UNAVAILABLE.

Writes of one process go out in call order on one connection (group commit), so without a
bound one lock left open by someone else (an operator's psql session) held up that write for
good, and every write queued behind it.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mesh.errors import DependencyUnavailable
from services.common.database import LOCK_WAIT_DETAIL, Database, Tx
from services.common.migrations import migrate
from tests.conftest import POSTGRES_ADMIN_DSN

LOCK_TIMEOUT_MS = 300
BOUND = 20.0  # seconds: far past every wait the code allows, so a hang fails, not the pace


@pytest.fixture
def holder(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A connection of the test's own, like an operator's session left open with a lock."""
    with psycopg.connect(postgres_dsn) as connection:
        yield connection


async def prepared(postgres_dsn: str) -> Database:
    database = Database("items", postgres_dsn, lock_timeout_ms=LOCK_TIMEOUT_MS)
    await database.transact(
        lambda tx: tx.execute("CREATE TABLE items (id TEXT PRIMARY KEY, key TEXT NOT NULL)")
    )
    await database.transact(lambda tx: tx.execute("INSERT INTO items (id, key) VALUES ('held', 'k')"))
    return database


def write(sql: str) -> Callable[[Tx], int]:
    return lambda tx: tx.execute(sql)


async def wait_for_lock_waiters(database: str, count: int) -> None:
    """Until ``count`` backends of ``database`` wait for a lock."""
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        async with asyncio.timeout(BOUND):
            while True:
                row = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
                    (database,),
                ).fetchone()
                if row is not None and row[0] >= count:
                    return
                await asyncio.sleep(0.01)


async def test_a_write_blocked_by_a_lock_held_elsewhere_gets_unavailable_and_the_next_writes_go_on(
    postgres_dsn: str, holder: psycopg.Connection[Any]
) -> None:
    database = await prepared(postgres_dsn)
    try:
        holder.execute("SELECT key FROM items WHERE id = 'held' FOR UPDATE")  # kept for the whole test
        async with asyncio.timeout(BOUND):
            with pytest.raises(DependencyUnavailable) as refused:
                await database.transact(write("UPDATE items SET key = 'changed' WHERE id = 'held'"))
            assert refused.value.name == "items database (postgresql)"
            assert refused.value.detail == LOCK_WAIT_DETAIL
            # The connection is sound and the next write is not held up.
            assert await database.transact(write("INSERT INTO items (id, key) VALUES ('next', 'k')")) == 1
        rows = await database.read(lambda tx: tx.query("SELECT id, key FROM items ORDER BY id"))
        assert rows == [{"id": "held", "key": "k"}, {"id": "next", "key": "k"}]
    finally:
        holder.rollback()  # a write still waiting (a failure) must not hold up close()
        await database.close()


async def test_a_blocked_write_in_a_batch_is_answered_once_and_the_rest_of_its_batch_commits(
    postgres_dsn: str, holder: psycopg.Connection[Any]
) -> None:
    """The write that waited out lock_timeout in a batch is not run again alone: that would
    hold every write behind it up for as long once more."""
    database = await prepared(postgres_dsn)
    blocked_runs = 0

    def blocked(tx: Tx) -> int:
        nonlocal blocked_runs
        blocked_runs += 1
        return tx.execute("UPDATE items SET key = 'changed' WHERE id = 'held'")

    try:
        holder.execute("SELECT key FROM items WHERE id = 'held' FOR UPDATE")
        async with asyncio.timeout(BOUND):
            first = asyncio.ensure_future(
                database.transact(write("UPDATE items SET key = 'x' WHERE id = 'held'"))
            )
            await wait_for_lock_waiters(holder.info.dbname, 1)
            # Queued while the first waits: they make the next batch, the blocked one between.
            batch = [
                asyncio.ensure_future(database.transact(work))
                for work in (
                    write("INSERT INTO items (id, key) VALUES ('a', 'k')"),
                    blocked,
                    write("INSERT INTO items (id, key) VALUES ('b', 'k')"),
                )
            ]
            await asyncio.wait([first, *batch])
        for refused in (first, batch[1]):
            error = refused.exception()
            assert isinstance(error, DependencyUnavailable) and error.detail == LOCK_WAIT_DETAIL, error
        assert blocked_runs == 1
        assert batch[0].result() == 1 and batch[2].result() == 1
        rows = await database.read(lambda tx: tx.query("SELECT id FROM items ORDER BY id"))
        assert rows == [{"id": "a"}, {"id": "b"}, {"id": "held"}]
    finally:
        holder.rollback()
        await database.close()


async def test_a_lock_timeout_set_by_the_database_is_kept(postgres_dsn: str) -> None:
    database = Database("items", postgres_dsn, lock_timeout_ms=LOCK_TIMEOUT_MS)
    show = "SELECT current_setting('lock_timeout') AS value"
    try:
        assert await database.read(lambda tx: tx.query(show)) == [{"value": f"{LOCK_TIMEOUT_MS}ms"}]
    finally:
        await database.close()
    name = postgres_dsn.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{name}\" SET lock_timeout = '5s'")
    database = Database("items", postgres_dsn, lock_timeout_ms=LOCK_TIMEOUT_MS)
    try:
        assert await database.read(lambda tx: tx.query(show)) == [{"value": "5s"}]
    finally:
        await database.close()


async def test_migrations_wait_for_another_instances_migrations_past_lock_timeout(
    postgres_dsn: str, holder: psycopg.Connection[Any], tmp_path: Path
) -> None:
    """Instances starting together serialize on the migration lock, and a long migration may
    hold it for longer than a request's write may wait."""
    (tmp_path / "001_items.sql").write_text("CREATE TABLE items (id TEXT PRIMARY KEY);\n")
    database = Database("items", postgres_dsn, lock_timeout_ms=LOCK_TIMEOUT_MS)
    try:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (zlib.crc32(b"items"),))  # the other instance
        migrating = asyncio.ensure_future(migrate(database, tmp_path))
        await wait_for_lock_waiters(holder.info.dbname, 1)
        done, _ = await asyncio.wait([migrating], timeout=5 * LOCK_TIMEOUT_MS / 1000)
        assert not done  # still waiting, long past lock_timeout
        holder.commit()
        async with asyncio.timeout(BOUND):
            assert await migrating == [1]
    finally:
        holder.rollback()
        await database.close()
