"""The consumer's inbox: which messages this consumer has already applied.

A broker delivers at least once (a redelivery after a crash, a publisher's retry), so a
consumer that wants exactly one effect per event remembers each message id it applied, in the
same transaction as the effect. The table lives in the consuming service's own database::

    inbox(consumer, message_id, received_time)  PRIMARY KEY (consumer, message_id)

(each service creates it in one of its migrations). Claiming an id that is already there
inserts nothing, and the caller skips the effect; on PostgreSQL a concurrent claim of the same
id waits for the first transaction, on SQLite writers are serialized, so two deliveries of one
message never both apply it.
"""

from __future__ import annotations

from services.common.database import Tx
from services.common.values import utc_now


def claim(tx: Tx, consumer: str, message_id: str) -> bool:
    """Record ``message_id`` as applied by ``consumer``; False when it already was (skip it)."""
    added = tx.execute(
        "INSERT INTO inbox (consumer, message_id, received_time) VALUES (?, ?, ?) "
        "ON CONFLICT (consumer, message_id) DO NOTHING",
        (consumer, message_id, utc_now()),
    )
    return added == 1


def seen(tx: Tx, consumer: str, message_id: str) -> bool:
    """Whether ``consumer`` has applied ``message_id`` (for tests and diagnostics)."""
    return (
        tx.one("SELECT 1 AS found FROM inbox WHERE consumer = ? AND message_id = ?", (consumer, message_id))
        is not None
    )
