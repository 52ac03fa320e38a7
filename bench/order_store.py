"""The order service's database path alone: what one order costs in CPU and commits.

``bench/orders.py`` runs the whole shop, where seven processes share two cores and one figure
moves another. This bench keeps only what the order service does with its database for one
order: ``Orders.create`` over the real ``OrderStore`` (the idempotency lookup, the insert with
its outbox row and the saga's lease, one save per step, the last with the confirmation and its
outbox row),
with participants that answer at once, CONCURRENCY orders in flight in one event loop, on a
fresh SQLite file (or the PostgreSQL database given by ``--database-url``, which must exist and
be empty; its tables are dropped after).

Reported: ``orders_per_s``, ``cpu_ms_per_order`` (this process's user + system CPU, every
thread, over the timed orders), ``transactions_per_order`` (calls of ``Database.transact``),
``reads_per_order`` (calls of ``Database.read``) and ``commits_per_order`` (COMMITs actually
written: group commit folds transactions queued meanwhile into one, on both engines). The last
line printed is one JSON object.

    .venv/bin/python bench/order_store.py                 # 2000 orders, 16 in flight, SQLite
    .venv/bin/python bench/order_store.py --concurrency 1 # one at a time: no grouping possible
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.common.database import Database, Tx  # noqa: E402
from services.common.migrations import migrate  # noqa: E402
from services.order import domain  # noqa: E402
from services.order.domain import Address, Line, Order, OrderStatus, Price  # noqa: E402
from services.order.orders import Orders  # noqa: E402
from services.order.store import OrderStore  # noqa: E402

MIGRATIONS = ROOT / "services" / "order" / "migrations"
CATALOG = {"TEA": Price(1250, "EUR")}
ADDRESS = Address("Ada", "1-1 Chiyoda", "Tokyo", "100-0001", "JP")


class InstantParticipants:
    """Every step succeeds at once: only the order service's own work is left to measure."""

    async def reserve_stock(self, order: Order) -> str:
        return "held"

    async def release_stock(self, order: Order) -> str:
        return "released"

    async def commit_stock(self, order: Order) -> str:
        return "committed"

    async def authorize_payment(self, order: Order) -> str:
        return "authorized"

    async def capture_payment(self, order: Order) -> str:
        return "captured"

    async def void_payment(self, order: Order) -> str:
        return "voided"

    async def refund_payment(self, order: Order) -> str:
        return "refunded"

    async def schedule_shipment(self, order: Order) -> str:
        return "scheduled"

    async def cancel_shipment(self, order: Order) -> str:
        return "cancelled"


class InstantLookups:
    async def check_user(self, user_id: str) -> None:
        return None

    async def catalog(self, skus: Iterable[str]) -> dict[str, Price]:
        return {sku: CATALOG[sku] for sku in skus}


def _counting(database: Database, counter: list[int]) -> None:
    """Count ``transact`` (``counter[0]``) and ``read`` (``counter[1]``) calls without changing
    what they do."""
    transact, read = database.transact, database.read

    async def counted(work: Callable[[Tx], Any]) -> Any:
        counter[0] += 1
        return await transact(work)

    async def counted_read(work: Callable[[Tx], Any]) -> Any:
        counter[1] += 1
        return await read(work)

    database.transact = counted  # type: ignore[method-assign]
    database.read = counted_read  # type: ignore[method-assign]


async def _place(orders: Orders, count: int, concurrency: int, prefix: str) -> int:
    participants, lookups = InstantParticipants(), InstantLookups()
    numbers = iter(range(count))
    confirmed = 0

    async def client() -> None:
        nonlocal confirmed
        for number in numbers:
            draft = domain.validate_create([Line("TEA", 1)], ADDRESS, f"{prefix}-{number}")
            order = await orders.create(f"u-{number % 97}", draft, lookups, participants)
            confirmed += order.status is OrderStatus.CONFIRMED

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return confirmed


async def run(url: str, count: int, concurrency: int) -> dict[str, Any]:
    database = Database("order", url)
    try:
        await migrate(database, MIGRATIONS)
        orders = Orders(OrderStore(database))
        await _place(orders, min(200, count), concurrency, "warm")  # connections, caches
        transactions = [0, 0]
        _counting(database, transactions)
        group = getattr(database, "_group", None)
        commits_before = group.commits if group is not None else 0
        cpu, wall = time.process_time(), time.perf_counter()
        confirmed = await _place(orders, count, concurrency, "timed")
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        await orders.close()
        result: dict[str, Any] = {
            "dialect": database.dialect,
            "orders": count,
            "confirmed": confirmed,
            "concurrency": concurrency,
            "orders_per_s": round(confirmed / wall, 1),
            "cpu_ms_per_order": round(cpu * 1000 / count, 3),
            "transactions_per_order": round(transactions[0] / count, 2),
            "reads_per_order": round(transactions[1] / count, 2),
        }
        if group is not None:
            result["commits_per_order"] = round((group.commits - commits_before) / count, 2)
        return result
    finally:
        if database.dialect == "postgresql":
            await database.transact(
                lambda tx: tx.execute("DROP TABLE IF EXISTS orders, outbox, request_keys, schema_migrations")
            )
        await database.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--database-url",
        default="",
        help="postgresql://... (an empty database); default: a fresh SQLite file",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tsunagu-bench-") as scratch:
        url = args.database_url or f"sqlite:///{os.path.join(scratch, 'order.db')}"
        result = asyncio.run(run(url, args.count, args.concurrency))
    print(json.dumps({**result, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
