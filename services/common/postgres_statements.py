"""Statements on one PostgreSQL connection, sent through libpq directly.

Why not psycopg's cursor: it drives every statement through a generator-based, non-blocking
protocol written in Python (send, flush, poll, read, parse, each step a trip through the
generator). Measured on the shape of this project's transactions (BEGIN, a one-row SELECT, a
one-row UPDATE, COMMIT; 3,000 of them against the local server, alternated rounds), that cost
about 150 µs of client CPU and 175 µs of server CPU per transaction. The same statements as one
blocking libpq call each, prepared once per connection, cost about 50 µs of client CPU and 110
µs in the server, in half the wall time. The blocking call releases the GIL while it waits, and
it runs on a database worker thread, never on the event loop.

What stays psycopg's: the connection (connect, close, ``broken``), the adapters (its
Transformer dumps the parameters and loads the rows, so values cross exactly as they did
through a cursor, JSONB included), and the errors (``error_from_result``, so a conflict is
still a SerializationFailure, a lost server still an OperationalError).

A statement is prepared the second time its text and parameter types are seen, as psycopg
prepared on the fifth; one seen once (a migration) is sent unprepared. At most
``max_prepared`` statements are kept per connection; past that the rest run unprepared, so
statements of varying text (an ``IN`` list of any length) cannot grow the server's memory.

A schema change made by another connection while this one serves (a newer instance's
migration adding a column) makes PostgreSQL refuse a prepared statement whose row type it
changes ("cached plan must not change result type"). That error is :class:`StalePlan`: every
statement of the connection is forgotten (and deallocated on the server once no transaction is
open), and :class:`~services.common.database.Database` runs the read or the transaction again,
which prepares them anew.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import psycopg
import psycopg.errors
from psycopg import pq
from psycopg.adapt import PyFormat, Transformer
from psycopg.pq.abc import PGresult

Row = dict[str, Any]
_PLAN_CHANGED = "cached plan must not change result type"
Buffer = bytes | bytearray | memoryview
_SUCCEEDED = frozenset({pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK})
_TEXTS_KEPT = 4096  # distinct statement texts whose numbered form is remembered


class StalePlan(psycopg.errors.FeatureNotSupported):
    """A prepared statement's row type changed under it (see the module doc); nothing it was
    asked to do ran, and running it again prepares it anew."""


def numbered(sql: str) -> bytes:
    """The statement with ``?`` placeholders as PostgreSQL's ``$1``, ``$2``, ...

    A statement may not hold a literal ``?`` (in a string, or the JSONB operator): it would be
    taken for a parameter.
    """
    parts = sql.split("?")
    if len(parts) == 1:
        return sql.encode()
    text = [parts[0]]
    for number, part in enumerate(parts[1:], 1):
        text.append(f"${number}")
        text.append(part)
    return "".join(text).encode()


class Statements:
    """Runs statements on ``connection`` (autocommit: transactions are sent as BEGIN/COMMIT).

    One per connection, used by one thread at a time (the worker thread owning the connection).
    """

    def __init__(
        self, connection: psycopg.Connection[Any], *, prepare_after: int = 2, max_prepared: int = 256
    ) -> None:
        self.connection = connection
        self._pgconn = connection.pgconn
        self._encoding = connection.info.encoding
        self._transformer = Transformer(connection)
        self._prepare_after = prepare_after
        self._max_prepared = max_prepared
        self._texts: dict[str, bytes] = {}
        self._uses: dict[tuple[bytes, Any], int] = {}
        self._prepared: dict[tuple[bytes, Any], bytes] = {}
        self._names = itertools.count()
        self._deallocate = False  # statements were forgotten: drop them on the server too

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed (or returned)."""
        return self._run(sql, params).command_tuples or 0

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run a query; its rows as dicts keyed by column name."""
        result = self._run(sql, params)
        fields = result.nfields
        if not fields:
            return []
        encoding = self._encoding
        names = [(result.fname(i) or b"").decode(encoding) for i in range(fields)]
        transformer = self._transformer
        transformer.set_pgresult(result)
        rows = transformer.load_rows(0, result.ntuples, tuple)
        return [dict(zip(names, row, strict=True)) for row in rows]

    def command(self, sql: bytes) -> None:
        """A statement without parameters or rows: BEGIN, COMMIT, ROLLBACK."""
        if self._deallocate:
            self._drop_forgotten()
        self._check(self._pgconn.exec_(sql))

    @property
    def in_failed_transaction(self) -> bool:
        """Whether a statement of the open transaction failed (only ROLLBACK is accepted now)."""
        return self._pgconn.transaction_status == pq.TransactionStatus.INERROR

    @property
    def usable(self) -> bool:
        """Whether the connection still talks to the server."""
        return self._pgconn.status == pq.ConnStatus.OK

    def _run(self, sql: str, params: Sequence[Any]) -> PGresult:
        if self._deallocate:
            self._drop_forgotten()
        text = self._texts.get(sql)
        if text is None:
            if len(self._texts) >= _TEXTS_KEPT:
                self._texts.clear()
            text = self._texts[sql] = numbered(sql)
        values: Sequence[Buffer | None] | None = None
        types: Sequence[int] | None = None
        formats: Sequence[pq.Format] | None = None
        if params:
            transformer = self._transformer
            values = transformer.dump_sequence(params, [PyFormat.AUTO] * len(params))
            types, formats = transformer.types, transformer.formats
        key = (text, types)
        name = self._prepared.get(key)
        if name is not None:
            return self._check(self._exec_prepared(name, values, formats))
        return self._check(self._first_uses(key, text, values, types, formats))

    def _first_uses(
        self,
        key: tuple[bytes, Any],
        text: bytes,
        values: Sequence[Buffer | None] | None,
        types: Sequence[int] | None,
        formats: Sequence[pq.Format] | None,
    ) -> PGresult:
        """Unprepared until the statement is seen ``prepare_after`` times, then prepared."""
        pgconn = self._pgconn
        uses = self._uses.get(key, 0) + 1
        if uses < self._prepare_after or len(self._prepared) >= self._max_prepared:
            if len(self._uses) >= _TEXTS_KEPT:
                self._uses.clear()
            self._uses[key] = uses
            return pgconn.exec_params(text, values, types, formats)
        name = f"tsunagu_{next(self._names)}".encode()
        self._check(pgconn.prepare(name, text, types))
        self._prepared[key] = name
        self._uses.pop(key, None)
        return self._exec_prepared(name, values, formats)

    def _exec_prepared(
        self, name: bytes, values: Sequence[Buffer | None] | None, formats: Sequence[pq.Format] | None
    ) -> PGresult:
        # A None value is a NULL parameter, as for exec_params: the stub of exec_prepared
        # leaves None out of the sequence's type, libpq and psycopg's C module take it.
        return self._pgconn.exec_prepared(name, values, formats)  # type: ignore[arg-type]

    def _drop_forgotten(self) -> None:
        """``DEALLOCATE ALL`` for statements forgotten after a StalePlan, once no transaction is
        open (in a failed one the server would refuse it; in an open one it would be the
        transaction's business)."""
        if self._pgconn.transaction_status == pq.TransactionStatus.IDLE:
            self._deallocate = False
            self._check(self._pgconn.exec_(b"DEALLOCATE ALL"))

    def _check(self, result: PGresult) -> PGresult:
        if result.status in _SUCCEEDED:
            return result
        error = psycopg.errors.error_from_result(result, encoding=self._encoding)
        if isinstance(error, psycopg.errors.FeatureNotSupported) and _PLAN_CHANGED in str(error):
            self._prepared.clear()
            self._uses.clear()
            self._deallocate = True
            raise StalePlan(str(error)) from error
        if not self.usable and not isinstance(error, psycopg.OperationalError):
            # The server went away mid-statement: libpq's own message, with no SQLSTATE.
            raise psycopg.OperationalError(str(error)) from error
        raise error
