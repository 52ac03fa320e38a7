"""services.common.database on a real PostgreSQL database: how reads run."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from mesh.errors import DependencyUnavailable
from services.common.database import Database, Tx
from tests.conftest import POSTGRES_ADMIN_DSN


def backend_pid(tx: Tx) -> int:
    row = tx.one("SELECT pg_backend_pid() AS pid")
    assert row is not None
    return int(row["pid"])


async def test_a_postgresql_read_runs_each_statement_on_its_own_without_begin_or_commit(
    postgres_dsn: str,
) -> None:
    database = Database("items", postgres_dsn)
    try:
        await database.transact(lambda tx: tx.execute("CREATE TABLE items (id TEXT PRIMARY KEY)"))
        await database.transact(lambda tx: tx.execute("INSERT INTO items (id) VALUES (?)", ("a",)))

        def look(tx: Tx) -> tuple[TransactionStatus, list[str]]:
            ids = [row["id"] for row in tx.query("SELECT id FROM items")]
            return tx.connection.info.transaction_status, ids

        status, ids = await database.read(look)
        assert ids == ["a"]
        assert status is TransactionStatus.IDLE  # no transaction left open between statements
        writing = await database.transact(lambda tx: tx.connection.info.transaction_status)
        assert writing is TransactionStatus.INTRANS  # writes keep theirs
    finally:
        await database.close()


async def test_a_postgresql_read_whose_connection_died_runs_again_on_a_fresh_one(postgres_dsn: str) -> None:
    database = Database("items", postgres_dsn, workers=1)  # one thread: one connection to kill
    try:
        first = await database.read(backend_pid)
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        second = await asyncio.wait_for(database.read(backend_pid), 30)
        assert second != first
    finally:
        await database.close()


async def test_a_postgresql_read_that_cannot_connect_is_unavailable_naming_the_database(
    postgres_dsn: str,
) -> None:
    database = Database("items", postgres_dsn, workers=1)
    name = postgres_dsn.rsplit("/", 1)[1]
    try:
        first = await database.read(backend_pid)
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        with pytest.raises(DependencyUnavailable) as down:
            await database.read(backend_pid)
        assert "items database (postgresql)" in str(down.value)
    finally:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await database.close()
