"""services.common.postgres_statements on a real PostgreSQL database: values, preparing, errors,
and what services.common.database does with it inside a transaction."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg.errors
import pytest

from services.common.database import Database, Tx
from services.common.postgres_statements import Statements, numbered
from tests.conftest import POSTGRES_ADMIN_DSN

VALUES: list[Any] = [
    7,
    2**40,  # the same text with a bigger int is dumped as int8, not int4
    -1.5,
    "text with ? and $1 in it",
    None,
    True,
    b"\x00\xffbytes",
    dt.datetime(2026, 12, 7, 15, 30, 1, 250000, tzinfo=dt.UTC),
    '{"a": [1, 2, {"b": null}]}',
]


@pytest.fixture
def connection(postgres_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE things (id INT PRIMARY KEY, n BIGINT, f DOUBLE PRECISION, t TEXT, "
            "maybe TEXT, b BOOLEAN, raw BYTEA, at TIMESTAMPTZ, doc JSONB)"
        )
        yield connection


def prepared_names(connection: psycopg.Connection[Any]) -> set[str]:
    """The statements prepared on this connection (the view is per session)."""
    rows = connection.pgconn.exec_(b"SELECT name FROM pg_prepared_statements")
    return {(rows.get_value(i, 0) or b"").decode() for i in range(rows.ntuples)}


def test_question_marks_become_numbered_parameters() -> None:
    assert numbered("SELECT 1") == b"SELECT 1"
    assert numbered("UPDATE t SET a = ? WHERE b = ? AND c IN (?, ?)") == (
        b"UPDATE t SET a = $1 WHERE b = $2 AND c IN ($3, $4)"
    )


def test_values_cross_as_they_do_through_a_psycopg_cursor(connection: psycopg.Connection[Any]) -> None:
    statements = Statements(connection)
    insert = "INSERT INTO things (id, n, f, t, maybe, b, raw, at, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    assert statements.execute(insert, [1, *VALUES[:1], *VALUES[2:]]) == 1
    assert statements.execute(insert, [2, *VALUES[1:]]) == 1  # the second use is prepared
    assert statements.execute(insert, [3, *VALUES[1:]]) == 1  # and runs prepared
    ours = statements.query("SELECT * FROM things ORDER BY id")
    cursor = connection.cursor()
    cursor.execute("SELECT * FROM things ORDER BY id")
    names = [column.name for column in cursor.description or ()]
    theirs = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    assert ours == theirs
    assert ours[1]["n"] == 2**40 and ours[0]["n"] == 7
    assert ours[1]["doc"] == {"a": [1, 2, {"b": None}]}  # JSONB arrives decoded, as before
    assert ours[1]["raw"] == b"\x00\xffbytes" and ours[1]["maybe"] is None
    assert ours[1]["at"] == VALUES[7]


def test_a_statement_is_prepared_on_its_second_use_and_at_most_max_prepared_are(
    connection: psycopg.Connection[Any],
) -> None:
    statements = Statements(connection, max_prepared=2)
    look = "SELECT count(*) AS n FROM things WHERE id > ?"
    assert statements.query(look, [0]) == [{"n": 0}]
    assert prepared_names(connection) == set()  # seen once: a migration's statement stays unprepared
    assert statements.query(look, [0]) == [{"n": 0}]
    assert prepared_names(connection) == {"tsunagu_0"}
    for text in ("SELECT ? AS a", "SELECT ? AS b", "SELECT ? AS c"):
        for _ in range(3):
            assert statements.query(text, ["x"]) == [{text[-1]: "x"}]
    assert prepared_names(connection) == {"tsunagu_0", "tsunagu_1"}  # the cap: the rest run unprepared


def test_errors_are_psycopgs_own_and_a_lost_server_is_operational(
    connection: psycopg.Connection[Any],
) -> None:
    statements = Statements(connection)
    insert = "INSERT INTO things (id) VALUES (?)"
    statements.execute(insert, [1])
    for _ in range(2):  # unprepared, then prepared
        with pytest.raises(psycopg.errors.UniqueViolation):
            statements.execute(insert, [1])
    with pytest.raises(psycopg.errors.UndefinedTable):
        statements.query("SELECT * FROM nothing_here")
    assert statements.usable
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (connection.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError):
        statements.execute(insert, [2])
    assert not statements.usable
    assert connection.broken  # what Database checks before it opens a fresh connection


async def test_work_that_swallows_a_failed_statement_commits_nothing_and_raises(postgres_dsn: str) -> None:
    database = Database("things", postgres_dsn, workers=1)
    try:
        await database.transact(lambda tx: tx.execute("CREATE TABLE things (id INT PRIMARY KEY)"))
        await database.transact(lambda tx: tx.execute("INSERT INTO things (id) VALUES (?)", (1,)))

        def careless(tx: Tx) -> str:
            tx.execute("INSERT INTO things (id) VALUES (?)", (2,))
            with contextlib.suppress(psycopg.errors.UniqueViolation):  # and goes on regardless
                tx.execute("INSERT INTO things (id) VALUES (?)", (1,))
            return "done"

        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            await database.transact(careless)
        rows = await database.read(lambda tx: tx.query("SELECT id FROM things ORDER BY id"))
        assert rows == [{"id": 1}]
        # The connection is clean for the next transaction: no transaction left open on it.
        await database.transact(lambda tx: tx.execute("INSERT INTO things (id) VALUES (?)", (3,)))
        rows = await database.read(lambda tx: tx.query("SELECT id FROM things ORDER BY id"))
        assert rows == [{"id": 1}, {"id": 3}]
    finally:
        await database.close()


async def test_a_transaction_whose_work_raises_is_rolled_back(postgres_dsn: str) -> None:
    database = Database("things", postgres_dsn, workers=1)
    try:
        await database.transact(lambda tx: tx.execute("CREATE TABLE things (id INT PRIMARY KEY)"))

        def half(tx: Tx) -> None:
            tx.execute("INSERT INTO things (id) VALUES (?)", (1,))
            raise LookupError("the store changed its mind")

        with pytest.raises(LookupError):
            await database.transact(half)
        assert await database.read(lambda tx: tx.query("SELECT id FROM things")) == []
    finally:
        await database.close()


async def test_a_large_parameter_and_result_cross_whole(postgres_dsn: str) -> None:
    """Several MB in one statement: libpq's blocking calls flush it all on psycopg's
    non-blocking connection."""
    database = Database("things", postgres_dsn, workers=1)
    big = "x" * (8 * 1024 * 1024)
    try:
        await database.transact(lambda tx: tx.execute("CREATE TABLE blobs (id INT PRIMARY KEY, body TEXT)"))
        for key in (1, 2):
            await database.transact(
                lambda tx, key=key: tx.execute("INSERT INTO blobs VALUES (?, ?)", (key, big))
            )
        rows = await database.read(lambda tx: tx.query("SELECT id, body FROM blobs ORDER BY id"))
        assert [row["id"] for row in rows] == [1, 2]
        assert all(row["body"] == big for row in rows)
    finally:
        await database.close()


async def test_a_column_added_by_another_connection_does_not_break_prepared_statements(
    postgres_dsn: str,
) -> None:
    """A migration run by a newer instance (ADD COLUMN) while this one serves: PostgreSQL
    refuses a prepared ``SELECT *`` whose row type changed ("cached plan must not change result
    type"); the statements are prepared again and the read or write runs as asked."""
    database = Database("things", postgres_dsn, workers=1)  # one thread: one connection, one cache
    look = "SELECT * FROM things WHERE id = ?"
    try:
        await database.transact(lambda tx: tx.execute("CREATE TABLE things (id INT PRIMARY KEY)"))
        await database.transact(lambda tx: tx.execute("INSERT INTO things (id) VALUES (?)", (1,)))
        for _ in range(3):  # prepared from the second use on
            assert await database.read(lambda tx: tx.query(look, (1,))) == [{"id": 1}]
            assert await database.transact(lambda tx: tx.query(look, (1,))) == [{"id": 1}]
        with psycopg.connect(postgres_dsn, autocommit=True) as migration:
            migration.execute("ALTER TABLE things ADD COLUMN note TEXT NOT NULL DEFAULT 'new'")
        assert await database.read(lambda tx: tx.query(look, (1,))) == [{"id": 1, "note": "new"}]

        def write_after_look(tx: Tx) -> list[dict[str, Any]]:
            rows = tx.query(look, (1,))
            tx.execute("UPDATE things SET note = ? WHERE id = ?", ("seen", 1))
            return rows

        with psycopg.connect(postgres_dsn, autocommit=True) as migration:
            migration.execute("ALTER TABLE things ADD COLUMN size INT NOT NULL DEFAULT 0")
        assert await database.transact(write_after_look) == [{"id": 1, "note": "new", "size": 0}]
        assert await database.read(lambda tx: tx.query(look, (1,))) == [{"id": 1, "note": "seen", "size": 0}]
    finally:
        await database.close()
