"""The shop's cross-service invariants, checked from each service's own database.

Every saga test ends here, so "the order looks right" is never judged from the order service's
word alone: the checker reads what inventory, payment and shipping actually recorded and
compares it with the orders. :func:`violations` returns readable lines (empty when all hold):

- every saga is terminal (no PENDING order, no cancellation left half done);
- stock reserved or committed equals what non-cancelled orders hold, per sku (and, given the
  starting stock, shelf + held + sold still adds up to it, so nothing leaked or was invented);
- captured payments equal confirmed orders' totals, one payment per order at most (no double
  charge), and nothing stays captured or authorized for a cancelled order;
- no live (SCHEDULED) shipment for a cancelled order, and one for each confirmed order;
- exactly one invoice per confirmed order (at most one for any order), and none for an order
  that was never confirmed (an order confirmed and then cancelled keeps its invoice).

Invoices are issued asynchronously (payment's billing consumer of order.confirmed events), so
:func:`violations` polls, within ``settle_seconds``, while the only thing wrong is a confirmed
order still waiting for its invoice; everything else is judged on the snapshot it ends with.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.common.database import Database, Row


@dataclass(frozen=True)
class ShopDatabases:
    """The database URL (SQLite path or PostgreSQL DSN) of each service the saga touches."""

    order: str
    inventory: str
    payment: str
    shipping: str


async def rows(url: str, name: str, sql: str) -> list[Row]:
    """A query's rows from one service's database (opened and closed around it)."""
    database = Database(name, url, workers=1)
    try:
        return await database.transact(lambda tx: tx.query(sql))
    finally:
        await database.close()


def _json(value: Any) -> Any:
    return value if isinstance(value, (dict, list)) else json.loads(value)


@dataclass(frozen=True)
class Snapshot:
    """What each service holds, read once."""

    orders: list[dict[str, Any]]
    reservations: list[Row]
    products: dict[str, int]
    payments: list[Row]
    invoices: list[Row]
    shipments: list[Row]

    @classmethod
    async def read(cls, dbs: ShopDatabases) -> Snapshot:
        documents = await rows(dbs.order, "order", "SELECT document FROM orders")
        products = await rows(dbs.inventory, "inventory", "SELECT sku, stock FROM products")
        return cls(
            [_json(r["document"]) for r in documents],
            await rows(dbs.inventory, "inventory", "SELECT order_id, items, state FROM reservations"),
            {str(p["sku"]): int(p["stock"]) for p in products},
            await rows(dbs.payment, "payment", "SELECT order_id, amount_minor, state FROM payments"),
            await rows(dbs.payment, "payment", "SELECT order_id, amount_minor FROM invoices"),
            await rows(dbs.shipping, "shipping", "SELECT order_id, state FROM shipments"),
        )


INVOICE_PENDING = "has no invoice"
SETTLE_SECONDS = 30.0


async def violations(
    dbs: ShopDatabases, initial_stock: Mapping[str, int] | None = None, settle_seconds: float = SETTLE_SECONDS
) -> list[str]:
    """Every broken invariant, one line each; [] when the shop is consistent.

    Polls (bounded by ``settle_seconds``) while the only violations are confirmed orders whose
    invoice the billing consumer has not issued yet.
    """
    deadline = time.monotonic() + settle_seconds
    while True:
        found = snapshot_violations(await Snapshot.read(dbs), initial_stock)
        waiting = found and all(INVOICE_PENDING in line for line in found)
        if not waiting or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


def ever_confirmed(order: Mapping[str, Any]) -> bool:
    """CONFIRMED now, or cancelled after its saga completed (its last step, commit_stock, done)."""
    if order["status"] == "CONFIRMED":
        return True
    return any(
        s.get("name") == "commit_stock" and s.get("outcome") == "completed" for s in order.get("steps", ())
    )


def snapshot_violations(shot: Snapshot, initial_stock: Mapping[str, int] | None = None) -> list[str]:
    """The invariants over one snapshot."""
    found: list[str] = []
    by_id = {o["order_id"]: o for o in shot.orders}
    live = {o["order_id"] for o in shot.orders if o["status"] != "CANCELLED"}
    confirmed = {o["order_id"]: o for o in shot.orders if o["status"] == "CONFIRMED"}
    cancelled = {o["order_id"] for o in shot.orders if o["status"] == "CANCELLED"}

    for order in shot.orders:
        if order["status"] == "PENDING" or (order.get("cancel_reason") and order["status"] != "CANCELLED"):
            found.append(
                f"saga not terminal: {order['order_id']} {order['status']} {order['status_reason']!r}"
            )

    held: Counter[str] = Counter()
    for reservation in shot.reservations:
        if reservation["state"] in ("HELD", "COMMITTED"):
            if reservation["order_id"] not in live:
                found.append(f"stock {reservation['state']} for order {reservation['order_id']} not live")
            for item in _json(reservation["items"]):
                held[item["sku"]] += int(item["quantity"])
    wanted: Counter[str] = Counter()
    for order_id in live:
        for item in by_id[order_id]["items"]:
            wanted[item["sku"]] += int(item["quantity"])
    if +held != +wanted:
        found.append(f"stock held {dict(held)} != held by live orders {dict(wanted)}")
    for sku, start in (initial_stock or {}).items():
        on_shelf = shot.products.get(sku, 0)
        if on_shelf < 0 or on_shelf + held[sku] != start:
            found.append(f"{sku}: shelf {on_shelf} + held/sold {held[sku]} != starting stock {start}")

    per_order = Counter(p["order_id"] for p in shot.payments)
    found += [f"{n} payments for order {o} (double charge)" for o, n in per_order.items() if n > 1]
    captured = {p["order_id"]: int(p["amount_minor"]) for p in shot.payments if p["state"] == "CAPTURED"}
    for order_id, order in confirmed.items():
        if captured.get(order_id) != int(order["total_minor"]):
            found.append(f"confirmed {order_id}: captured {captured.get(order_id)} != {order['total_minor']}")
    for p in shot.payments:
        if p["order_id"] in cancelled and p["state"] in ("CAPTURED", "AUTHORIZED"):
            found.append(f"cancelled order {p['order_id']} still has a {p['state']} payment")
    if sum(captured.values()) != sum(int(o["total_minor"]) for o in confirmed.values()):
        found.append(f"captured total {sum(captured.values())} != confirmed orders' totals")

    for s in shot.shipments:
        if s["state"] == "SCHEDULED" and s["order_id"] in cancelled:
            found.append(f"live shipment for cancelled order {s['order_id']}")
    scheduled = {s["order_id"] for s in shot.shipments if s["state"] == "SCHEDULED"}
    found += [f"confirmed {o} has no live shipment" for o in confirmed if o not in scheduled]

    invoices = Counter(i["order_id"] for i in shot.invoices)
    found += [f"order {o} has {n} invoices" for o, n in invoices.items() if n > 1]
    found += [f"confirmed {o} {INVOICE_PENDING}" for o in confirmed if invoices[o] == 0]
    never_confirmed = {o["order_id"] for o in shot.orders if not ever_confirmed(o)}
    found += [f"order {o} was never confirmed but has an invoice" for o in invoices if o in never_confirmed]
    return found


async def scalar(dbs: ShopDatabases, service: str, sql: str) -> int:
    """One number from a service's database (for a test's own sums)."""
    found = await rows(getattr(dbs, service), service, sql)
    return int(next(iter(found[0].values())))
