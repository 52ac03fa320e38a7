"""Inventory's own database: products, reservations and processed restocks."""

from __future__ import annotations

import json
from dataclasses import dataclass

from services.common.database import Database, Row, Tx
from services.common.errors import NotFound
from services.common.idempotency import RequestKey, check, claim
from services.common.values import utc_now
from services.inventory.domain import DOMAIN, Line, ReservationState, can_commit, insufficient_stock


@dataclass(frozen=True)
class ProductRecord:
    sku: str
    name: str
    price_minor: int
    currency: str
    stock: int
    update_time: str = ""


@dataclass(frozen=True)
class ReservationRecord:
    reservation_id: str
    order_id: str
    items: tuple[Line, ...]
    state: ReservationState
    create_time: str
    update_time: str


def _product(row: Row) -> ProductRecord:
    return ProductRecord(
        row["sku"],
        row["name"],
        int(row["price_minor"]),
        row["currency"],
        int(row["stock"]),
        row["update_time"],
    )


def _reservation(row: Row) -> ReservationRecord:
    items = row["items"] if isinstance(row["items"], list) else json.loads(row["items"])
    return ReservationRecord(
        row["reservation_id"],
        row["order_id"],
        tuple(Line(i["sku"], int(i["quantity"])) for i in items),
        ReservationState(row["state"]),
        row["create_time"],
        row["update_time"],
    )


class InventoryStore:
    """Every read and write of inventory data, each in one transaction."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def seed(self, products: tuple[ProductRecord, ...]) -> int:
        """Insert products that are missing (existing ones are left as they are)."""

        def work(tx: Tx) -> int:
            added = 0
            for p in products:
                added += tx.execute(
                    "INSERT INTO products (sku, name, price_minor, currency, stock, update_time) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sku) DO NOTHING",
                    (p.sku, p.name, p.price_minor, p.currency, p.stock, utc_now()),
                )
            return added

        return await self._db.transact(work)

    async def list_products(self, after_sku: str, limit: int) -> list[ProductRecord]:
        rows = await self._db.read(
            lambda tx: tx.query(
                "SELECT * FROM products WHERE sku > ? ORDER BY sku LIMIT ?", (after_sku, limit)
            )
        )
        return [_product(r) for r in rows]

    async def get_product(self, sku: str) -> ProductRecord:
        row = await self._db.read(lambda tx: tx.one("SELECT * FROM products WHERE sku = ?", (sku,)))
        if row is None:
            raise NotFound(f"product '{sku}' not found")
        return _product(row)

    async def restock(self, sku: str, quantity: int, request_id: str) -> ProductRecord:
        """Add stock once per request_id (a re-sent request adds nothing more); the key
        reused for another sku or quantity is refused (IDEMPOTENCY_KEY_REUSED)."""

        def work(tx: Tx) -> ProductRecord:
            if request_id:
                done = tx.one("SELECT sku, quantity FROM restocks WHERE request_id = ?", (request_id,))
                if done is not None:
                    check(
                        "request_id",
                        request_id,
                        (done["sku"], int(done["quantity"])),
                        (sku, quantity),
                        DOMAIN,
                    )
                    return self._product_in(tx, done["sku"])
                tx.execute(
                    "INSERT INTO restocks (request_id, sku, quantity, create_time) VALUES (?, ?, ?, ?)",
                    (request_id, sku, quantity, utc_now()),
                )
            row = tx.one(
                "UPDATE products SET stock = stock + ?, update_time = ? WHERE sku = ? RETURNING *",
                (quantity, utc_now(), sku),
            )
            if row is None:
                raise NotFound(f"product '{sku}' not found")
            return _product(row)

        return await self._db.transact(work)

    async def reserve(
        self, reservation_id: str, order_id: str, lines: list[Line], key: RequestKey | None = None
    ) -> ReservationRecord:
        """Hold every line or none; a known reservation_id returns the first result, if the
        request repeats its order and lines (else IDEMPOTENCY_KEY_REUSED, as for the request_id)."""

        def work(tx: Tx) -> ReservationRecord:
            claim(tx, key, DOMAIN)
            now = utc_now()
            items = json.dumps([{"sku": line.sku, "quantity": line.quantity} for line in lines])
            # The common case first: a new reservation is written with no read before it, then
            # its stock taken; a line that cannot be held raises, and that rolls both back. A
            # re-send, or a concurrent twin that committed first, finds the id taken.
            row = tx.one(
                "INSERT INTO reservations (reservation_id, order_id, items, state, create_time, update_time) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (reservation_id) DO NOTHING RETURNING *",
                (reservation_id, order_id, items, ReservationState.HELD.value, now, now),
            )
            if row is None:
                first = self._reservation_in(tx, reservation_id)
                check(
                    "reservation_id",
                    reservation_id,
                    (first.order_id, first.items),
                    (order_id, tuple(lines)),
                    DOMAIN,
                )
                return first
            for line in lines:
                # One conditional UPDATE: atomic on both engines, so stock can never go negative.
                taken = tx.execute(
                    "UPDATE products SET stock = stock - ?, update_time = ? WHERE sku = ? AND stock >= ?",
                    (line.quantity, now, line.sku, line.quantity),
                )
                if not taken:
                    product = tx.one("SELECT stock FROM products WHERE sku = ?", (line.sku,))
                    if product is None:
                        raise NotFound(f"product '{line.sku}' not found")
                    raise insufficient_stock(line.sku, line.quantity, int(product["stock"]))
            return _reservation(row)

        return await self._db.transact(work)

    async def release(self, reservation_id: str, key: RequestKey | None = None) -> ReservationRecord | None:
        """Return held or sold units to the shelf; None (a no-op) for an unknown id."""

        def work(tx: Tx) -> ReservationRecord | None:
            claim(tx, key, DOMAIN)
            row = tx.one("SELECT * FROM reservations WHERE reservation_id = ?", (reservation_id,))
            if row is None:
                return None
            record = _reservation(row)
            if record.state is ReservationState.RELEASED:
                return record
            now = utc_now()
            for line in record.items:
                tx.execute(
                    "UPDATE products SET stock = stock + ?, update_time = ? WHERE sku = ?",
                    (line.quantity, now, line.sku),
                )
            return self._set_state(tx, reservation_id, ReservationState.RELEASED, now)

        return await self._db.transact(work)

    async def commit(self, reservation_id: str, key: RequestKey | None = None) -> ReservationRecord:
        """Turn a held reservation into a sale; idempotent."""

        def work(tx: Tx) -> ReservationRecord:
            claim(tx, key, DOMAIN)
            # The common case first: a held reservation moves in one UPDATE, no read first.
            row = tx.one(
                "UPDATE reservations SET state = ?, update_time = ? WHERE reservation_id = ? AND state = ? "
                "RETURNING *",
                (ReservationState.COMMITTED.value, utc_now(), reservation_id, ReservationState.HELD.value),
            )
            if row is not None:
                return _reservation(row)
            record = self._reservation_in(tx, reservation_id)
            if can_commit(record.state):
                record = self._set_state(tx, reservation_id, ReservationState.COMMITTED, utc_now())
            return record

        return await self._db.transact(work)

    async def get_reservation(self, reservation_id: str) -> ReservationRecord:
        return await self._db.read(lambda tx: self._reservation_in(tx, reservation_id))

    @staticmethod
    def _set_state(tx: Tx, reservation_id: str, state: ReservationState, now: str) -> ReservationRecord:
        """Move the reservation to ``state``; the row as written (RETURNING: no re-read)."""
        row = tx.one(
            "UPDATE reservations SET state = ?, update_time = ? WHERE reservation_id = ? RETURNING *",
            (state.value, now, reservation_id),
        )
        if row is None:
            raise NotFound(f"reservation '{reservation_id}' not found")
        return _reservation(row)

    @staticmethod
    def _product_in(tx: Tx, sku: str) -> ProductRecord:
        row = tx.one("SELECT * FROM products WHERE sku = ?", (sku,))
        if row is None:
            raise NotFound(f"product '{sku}' not found")
        return _product(row)

    @staticmethod
    def _reservation_in(tx: Tx, reservation_id: str) -> ReservationRecord:
        row = tx.one("SELECT * FROM reservations WHERE reservation_id = ?", (reservation_id,))
        if row is None:
            raise NotFound(f"reservation '{reservation_id}' not found")
        return _reservation(row)
