"""The outbox table's reads and writes (the table itself comes from the service's migration).

A service writes :func:`add` inside the transaction that changes its own data, so the event
exists if and only if the change committed. The relay takes unsent rows with :func:`claim`,
publishes them and records each confirmed one with :func:`mark_sent`.

Claims keep several relays (several instances of one service) from interleaving: a relay takes
rows only while no other relay holds an unexpired claim on any unsent row, so exactly one
relay publishes at a time and rows leave in ``seq`` order; a relay that died loses its claim
when it expires. On PostgreSQL the claim runs under a transaction-scoped advisory lock (so
the "nobody else holds a claim" check and the claim itself are atomic); SQLite serializes
writers anyway.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from services.common.database import Tx

CLAIM_LOCK = zlib.crc32(b"outbox-claim")


@dataclass(frozen=True)
class OutboxMessage:
    """One event as stored: where it goes (routing key), what it is (type) and its body."""

    event_id: str
    routing_key: str
    message_type: str
    payload: bytes
    create_time: str
    seq: int = 0
    attempts: int = 0


def add(tx: Tx, message: OutboxMessage) -> None:
    """Insert an event in the caller's transaction."""
    tx.execute(
        "INSERT INTO outbox (event_id, routing_key, message_type, payload, create_time) VALUES (?, ?, ?, ?, ?)",
        (message.event_id, message.routing_key, message.message_type, message.payload, message.create_time),
    )


def claim(
    tx: Tx, owner: str, now: float, ttl: float, limit: int, skip: Collection[int] = ()
) -> list[OutboxMessage]:
    """Take up to ``limit`` unsent rows, oldest first, for ``owner`` until ``now + ttl``.

    Empty when another relay holds a live claim (it is publishing; wait for it). Rows whose
    ``seq`` is in ``skip`` (the relay's parked rows) are left alone, so they cannot fill a batch.
    """
    if tx.dialect == "postgresql":
        tx.execute("SELECT pg_advisory_xact_lock(?)", (CLAIM_LOCK,))
    skipped = sorted(skip)
    not_skipped = f"AND seq NOT IN ({', '.join('?' for _ in skipped)}) " if skipped else ""
    # One statement (one round trip): the oldest unsent rows, unless another relay holds a
    # live claim; RETURNING gives each row as claimed (attempts already counted).
    rows = tx.query(
        "UPDATE outbox SET claimed_by = ?, claim_until = ?, attempts = attempts + 1 "
        "WHERE seq IN (SELECT seq FROM outbox "
        f"WHERE sent_time IS NULL {not_skipped}ORDER BY seq LIMIT ?) "
        "AND NOT EXISTS (SELECT 1 FROM outbox "
        "WHERE sent_time IS NULL AND claimed_by <> ? AND claim_until >= ?) "
        "RETURNING seq, event_id, routing_key, message_type, payload, create_time, attempts",
        (owner, now + ttl, *skipped, limit, owner, now),
    )
    return [
        OutboxMessage(
            event_id=str(row["event_id"]),
            routing_key=str(row["routing_key"]),
            message_type=str(row["message_type"]),
            payload=bytes(row["payload"]),
            create_time=str(row["create_time"]),
            seq=int(row["seq"]),
            attempts=int(row["attempts"]),
        )
        for row in sorted(rows, key=lambda row: int(row["seq"]))  # RETURNING keeps no order
    ]


def mark_sent(tx: Tx, seqs: Sequence[int], sent_time: str) -> int:
    """Record rows as published (confirmed by the broker); returns how many were still unsent."""
    if not seqs:
        return 0
    marks = ", ".join("?" for _ in seqs)
    return tx.execute(
        f"UPDATE outbox SET sent_time = ?, claimed_by = '', claim_until = 0 "
        f"WHERE sent_time IS NULL AND seq IN ({marks})",
        (sent_time, *seqs),
    )


def renew(tx: Tx, owner: str, until: float) -> int:
    """Extend ``owner``'s claims on unsent rows to ``until``; how many it still held."""
    return tx.execute(
        "UPDATE outbox SET claim_until = ? WHERE claimed_by = ? AND sent_time IS NULL",
        (until, owner),
    )


def release(tx: Tx, owner: str) -> int:
    """Give up ``owner``'s claims on unsent rows (after a broker failure, at shutdown)."""
    return tx.execute(
        "UPDATE outbox SET claimed_by = '', claim_until = 0 WHERE claimed_by = ? AND sent_time IS NULL",
        (owner,),
    )


def pending(tx: Tx) -> int:
    """How many events wait to be published."""
    row = tx.one("SELECT COUNT(*) AS n FROM outbox WHERE sent_time IS NULL")
    return int(row["n"]) if row is not None else 0
