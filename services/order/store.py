"""The order service's own database: each order is one JSON document plus lookup columns.

The document is the durable saga log: a save writes the order's fields and its whole step
history in one transaction, so a step's outcome and the order's own change commit together
(or not at all), and the orchestrator starts the next step only after that commit.

Saves are optimistic: every row carries a version, and a save made from a stale copy (another
runner moved the order on meanwhile) changes nothing and raises :class:`StaleOrder`, so two
runners can never silently overwrite each other's step history. On top of that, a runner
holds a lease (``lease_owner``, ``lease_expires``) while it drives an order; a save made with
an ``owner`` also requires that lease, which fences off a runner whose lease ran out (a paused
or partitioned process) even before the new holder has saved anything. The lease costs no
transactions of its own on the common path: a new order is inserted with its lease already
taken by the process that will drive it, ``claim`` (for every later drive) reads the order in
the transaction that takes the lease, and the save that ends the saga (CONFIRMED, CANCELLED)
gives the lease back in its own UPDATE, so a new order's writes are its insert plus one per
step outcome.

Events go out through the outbox (:mod:`services.order.events`): ``create`` writes
``order.created`` with the new order, and a save that moves the status to CONFIRMED or
CANCELLED writes ``order.confirmed`` / ``order.cancelled``, in the save's own transaction. The
previous status is read in that transaction, at the version the save is made over (on
PostgreSQL by the UPDATE itself, which returns it; on SQLite by a read under
``BEGIN IMMEDIATE``'s write lock), so a retried or stale save, or a save without a status change,
writes no event: exactly one event per transition. ``on_event`` (the relay's wake-up) is called
after such a commit so the event leaves without waiting for the next poll.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc

from services.common.database import Database, Row, Tx
from services.common.errors import DomainError, NotFound
from services.common.idempotency import RequestKey, claim
from services.common.messaging import outbox
from services.order import events
from services.order.domain import DOMAIN, Address, Item, Order, OrderStatus, Outcome, StepRecord, saga_open

_ENCODER = json.JSONEncoder(separators=(",", ":"))  # made once: json.dumps with options makes one per call
COLUMNS = "order_id, user_id, request_id, status, create_time, update_time, version, document"


@dataclass(frozen=True)
class Lease:
    """An unfinished order and who (if anyone) holds its lease, until when (epoch seconds)."""

    order: Order
    owner: str
    expires: float


class StaleOrder(DomainError):
    """The order changed since it was read; re-read it (ABORTED if it reaches a client)."""

    code = grpc.StatusCode.ABORTED

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order '{order_id}' was changed concurrently; read it again")
        self.order_id = order_id


def document(order: Order) -> str:
    """The order as the JSON text stored in the ``document`` column (without its version).

    Field by field, in the dataclass's order: the same text ``dataclasses.asdict`` gave (tested),
    which deep-copied the order recursively and cost 90 µs of every saga save.
    """
    a = order.address
    body = {
        "order_id": order.order_id,
        "user_id": order.user_id,
        "request_id": order.request_id,
        "items": [
            {"sku": i.sku, "quantity": i.quantity, "unit_price_minor": i.unit_price_minor}
            for i in order.items
        ],
        "currency": order.currency,
        "total_minor": order.total_minor,
        "address": {
            "recipient": a.recipient,
            "line1": a.line1,
            "city": a.city,
            "postal_code": a.postal_code,
            "country_code": a.country_code,
        },
        "create_time": order.create_time,
        "update_time": order.update_time,
        "status": order.status,
        "status_reason": order.status_reason,
        "cancel_reason": order.cancel_reason,
        "reservation_id": order.reservation_id,
        "payment_id": order.payment_id,
        "shipment_id": order.shipment_id,
        "steps": [
            {
                "name": s.name,
                "outcome": s.outcome,
                "detail": s.detail,
                "time": s.time,
                "uncertain": s.uncertain,
            }
            for s in order.steps
        ],
    }
    return _ENCODER.encode(body)


def from_document(body: dict[str, Any], version: int) -> Order:
    return Order(
        order_id=body["order_id"],
        user_id=body["user_id"],
        request_id=body["request_id"],
        items=tuple(Item(i["sku"], int(i["quantity"]), int(i["unit_price_minor"])) for i in body["items"]),
        currency=body["currency"],
        total_minor=int(body["total_minor"]),
        address=Address(**body["address"]),
        status=OrderStatus(body["status"]),
        create_time=body["create_time"],
        update_time=body["update_time"],
        status_reason=body.get("status_reason", ""),
        cancel_reason=body.get("cancel_reason", ""),
        reservation_id=body.get("reservation_id", ""),
        payment_id=body.get("payment_id", ""),
        shipment_id=body.get("shipment_id", ""),
        steps=tuple(
            StepRecord(s["name"], Outcome(s["outcome"]), s["detail"], s["time"], bool(s.get("uncertain")))
            for s in body.get("steps", ())
        ),
        version=version,
    )


def _order(row: Row) -> Order:
    raw = row["document"]
    body = raw if isinstance(raw, dict) else json.loads(raw)  # JSONB arrives decoded, TEXT does not
    return from_document(body, int(row["version"]))


class OrderStore:
    """Every read and write of orders, each in one transaction."""

    def __init__(self, database: Database, on_event: Callable[[], None] | None = None) -> None:
        self._db = database
        self._on_event = on_event or (lambda: None)

    async def create(self, order: Order, lease: tuple[str, float] | None = None) -> tuple[Order, bool]:
        """Store a new order; when (user, request_id) is taken, the existing one and False.

        ``lease`` (owner, expiry in epoch seconds) is taken on the new order in the same
        INSERT, for the runner that drives it next: that saves the saga's claim transaction.
        """
        owner, expires = lease or ("", 0.0)

        def work(tx: Tx) -> tuple[Order, bool]:
            added = tx.execute(
                f"INSERT INTO orders ({COLUMNS}, saga_open, lease_owner, lease_expires) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, request_id) DO NOTHING",
                (
                    order.order_id,
                    order.user_id,
                    order.request_id,
                    order.status.value,
                    order.create_time,
                    order.update_time,
                    1,
                    document(order),
                    int(saga_open(order)),
                    owner,
                    expires,
                ),
            )
            if added:
                stored = replace(order, version=1)
                outbox.add(tx, events.order_event(events.CREATED, stored))
                return stored, True
            existing = self._find_in(tx, order.user_id, order.request_id)
            assert existing is not None  # the conflict was on exactly this key
            return existing, False

        result = await self._db.transact(work)
        if result[1]:
            self._on_event()
        return result

    async def claim_key(self, key: RequestKey | None) -> bool:
        """Remember a request_id of an RPC without an order-level key (CancelOrder); False for a
        re-send, IDEMPOTENCY_KEY_REUSED when it was used for another request."""
        if key is None:
            return True
        return await self._db.transact(lambda tx: claim(tx, key, DOMAIN))

    async def find(self, user_id: str, request_id: str) -> Order | None:
        """The user's order for an idempotency key, if there is one."""
        return await self._db.read(lambda tx: self._find_in(tx, user_id, request_id))

    async def get(self, order_id: str) -> Order:
        row = await self._db.read(
            lambda tx: tx.one(f"SELECT {COLUMNS} FROM orders WHERE order_id = ?", (order_id,))
        )
        if row is None:
            raise NotFound(f"order '{order_id}' not found")
        return _order(row)

    async def save(self, order: Order, owner: str | None = None) -> Order:
        """Write the order over the version it was read at; StaleOrder if that moved on.

        With ``owner``, the save also requires that owner's lease on the order, and keeps it
        while the saga has work left: the save that ends the saga gives it back.
        """

        def work(tx: Tx) -> tuple[Order, bool]:
            still_open = saga_open(order)
            release = "" if owner is None or still_open else ", lease_owner = '', lease_expires = 0"
            assignments = (
                f"status = ?, update_time = ?, version = version + 1, document = ?, saga_open = ?{release}"
            )
            values: list[object] = [order.status.value, order.update_time, document(order), int(still_open)]
            match = "orders.order_id = ? AND orders.version = ?"
            keys: list[object] = [order.order_id, order.version]
            if owner is not None:
                match += " AND orders.lease_owner = ?"
                keys.append(owner)
            if tx.dialect == "postgresql":
                # One statement, one round trip: the subquery reads the status the row has at
                # the statement's start; a row moved past ``order.version`` fails the match
                # once its lock is ours, so the status returned is the one at that version.
                row = tx.one(
                    f"UPDATE orders SET {assignments} "
                    "FROM (SELECT status AS previous FROM orders WHERE order_id = ?) AS before "
                    f"WHERE {match} RETURNING before.previous",
                    (*values, order.order_id, *keys),
                )
                if row is None:
                    raise StaleOrder(order.order_id)
                previous = row["previous"]
            else:  # BEGIN IMMEDIATE already holds the write lock; statements cost no round trip
                current = tx.one("SELECT status, version FROM orders WHERE order_id = ?", (order.order_id,))
                if current is None or int(current["version"]) != order.version:
                    raise StaleOrder(order.order_id)
                if not tx.execute(f"UPDATE orders SET {assignments} WHERE {match}", (*values, *keys)):
                    raise StaleOrder(order.order_id)
                previous = current["status"]
            saved = replace(order, version=order.version + 1)
            event = events.transition_event(OrderStatus(previous), order.status)
            if event is not None:
                outbox.add(tx, events.order_event(event, saved))
            return saved, event is not None

        saved, evented = await self._db.transact(work)
        if evented:
            self._on_event()
        return saved

    async def claim(self, order_id: str, owner: str, now: float, ttl: float) -> Order | None:
        """Take (or keep) the lease on an unfinished order and read it, in one transaction;
        None while another holds it.

        Terminal orders can be claimed too (a CancelOrder of a CONFIRMED order needs it).
        """

        def work(tx: Tx) -> Row | None:
            taken = tx.execute(
                "UPDATE orders SET lease_owner = ?, lease_expires = ? WHERE order_id = ? "
                "AND status <> 'CANCELLED' "
                "AND (lease_owner = '' OR lease_owner = ? OR lease_expires < ?)",
                (owner, now + ttl, order_id, owner, now),
            )
            return tx.one(f"SELECT {COLUMNS} FROM orders WHERE order_id = ?", (order_id,)) if taken else None

        row = await self._db.transact(work)
        return _order(row) if row is not None else None

    async def renew(self, owner: str, order_ids: Sequence[str], now: float, ttl: float) -> int:
        """Extend the owner's leases on these orders; how many it still held."""
        if not order_ids:
            return 0
        marks = ", ".join("?" for _ in order_ids)
        return await self._db.transact(
            lambda tx: tx.execute(
                f"UPDATE orders SET lease_expires = ? WHERE lease_owner = ? AND order_id IN ({marks})",
                (now + ttl, owner, *order_ids),
            )
        )

    async def release(self, owner: str, order_id: str | None = None) -> int:
        """Give up the owner's lease on one order (or on all, at shutdown)."""
        sql, params = "UPDATE orders SET lease_owner = '', lease_expires = 0 WHERE lease_owner = ?", [owner]
        if order_id is not None:
            sql += " AND order_id = ?"
            params.append(order_id)
        return await self._db.transact(lambda tx: tx.execute(sql, params))

    async def unfinished(self, now: float | None = None, limit: int = 1000) -> list[Lease]:
        """Orders whose saga has work left, oldest change first; with ``now``, only those
        whose lease nobody holds (free or expired)."""

        def work(tx: Tx) -> list[Row]:
            sql = "SELECT order_id, user_id, update_time, lease_owner, lease_expires, document FROM orders "
            sql += "WHERE saga_open = 1"
            params: list[object] = []
            if now is not None:
                sql += " AND (lease_owner = '' OR lease_expires < ?)"
                params.append(now)
            return tx.query(sql + " ORDER BY update_time LIMIT ?", (*params, limit))

        return [
            Lease(_order({**row, "version": 0}), str(row["lease_owner"]), float(row["lease_expires"]))
            for row in await self._db.read(work)
        ]

    async def list_for_user(self, user_id: str, after: tuple[str, str] | None, limit: int) -> list[Order]:
        """The user's orders newest first, starting after (create_time, order_id) when given."""

        def work(tx: Tx) -> list[Row]:
            if after is None:
                return tx.query(
                    f"SELECT {COLUMNS} FROM orders WHERE user_id = ? "
                    "ORDER BY create_time DESC, order_id DESC LIMIT ?",
                    (user_id, limit),
                )
            time, order_id = after
            return tx.query(
                f"SELECT {COLUMNS} FROM orders WHERE user_id = ? "
                "AND (create_time < ? OR (create_time = ? AND order_id < ?)) "
                "ORDER BY create_time DESC, order_id DESC LIMIT ?",
                (user_id, time, time, order_id, limit),
            )

        return [_order(row) for row in await self._db.read(work)]

    @staticmethod
    def _find_in(tx: Tx, user_id: str, request_id: str) -> Order | None:
        row = tx.one(
            f"SELECT {COLUMNS} FROM orders WHERE user_id = ? AND request_id = ?", (user_id, request_id)
        )
        return _order(row) if row is not None else None
