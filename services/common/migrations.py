"""Schema migrations, run at every start and idempotent.

Each service keeps numbered ``NNN_name.sql`` files in its ``migrations/`` folder. A file is
applied once, in the same transaction as the row recording it; several instances of one
service starting together serialize on a lock (SQLite's write lock, a PostgreSQL advisory
lock) so each file still runs exactly once. ``{json}`` in a file becomes the engine's JSON
column type (JSONB on PostgreSQL, TEXT on SQLite), ``{bytes}`` its binary type, and
``{serial_key}`` an auto-numbered integer primary key (an outbox's publication order).
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

from services.common.database import Database, Tx, split_statements

log = logging.getLogger(__name__)

DIALECT_TYPES = {
    "postgresql": {"json": "JSONB", "bytes": "BYTEA", "serial_key": "BIGSERIAL PRIMARY KEY"},
    "sqlite": {"json": "TEXT", "bytes": "BLOB", "serial_key": "INTEGER PRIMARY KEY AUTOINCREMENT"},
}


def migration_files(folder: Path) -> list[tuple[int, Path]]:
    """The migration files of a folder, ordered by their numeric prefix."""
    found = []
    for path in folder.glob("*.sql"):
        prefix = path.name.split("_", 1)[0]
        if prefix.isdigit():
            found.append((int(prefix), path))
    return sorted(found)


async def migrate(database: Database, folder: Path) -> list[int]:
    """Apply every migration in ``folder`` not yet applied; returns the versions applied now."""
    files = migration_files(folder)
    lock_key = zlib.crc32(database.name.encode())

    def apply(tx: Tx) -> list[int]:
        if tx.dialect == "postgresql":
            # Another instance's migrations may hold the lock for longer than a request's write
            # may wait (the database's lock_timeout): wait for them, for this transaction only.
            tx.execute("SELECT set_config('lock_timeout', '0', true)")
            tx.execute("SELECT pg_advisory_xact_lock(?)", (lock_key,))
        tx.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT)")
        done = {row["version"] for row in tx.query("SELECT version FROM schema_migrations")}
        applied = []
        for version, path in files:
            if version in done:
                continue
            script = path.read_text().format(**DIALECT_TYPES[tx.dialect])
            for statement in split_statements(script):
                tx.execute(statement)
            tx.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (version, path.name))
            applied.append(version)
        return applied

    applied = await database.transact(apply)
    if applied:
        log.info("migrations applied", extra={"database": database.name, "versions": applied})
    return applied
