"""``python -m services.order.saga.cli``: list the order sagas that are not terminal.

An operator's view of the durable saga log, read straight from the order service's database
(``ORDER_DATABASE_URL``, else ``$MESH_DATA_DIR/order.sqlite3``), so it works while the service
is down, which is when it is most wanted. For each open saga: the order, its phase (forward, or
compensating after a failure or a cancellation), the last recorded step, who holds its lease
and for how long, and the status reason. Exit code 0 when none is open, 1 otherwise (2: no
database), so a script can wait on it. ``mesh sagas`` runs this module when
``MESH_SAGAS_MODULE=services.order.saga.cli`` (see mesh/cli.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mesh.errors import DependencyUnavailable
from services.common.database import Database
from services.order.store import Lease, OrderStore


def database_url(environ: Mapping[str, str]) -> str:
    """The same rule the service uses for its own database."""
    default = str(Path(environ.get("MESH_DATA_DIR", "data")) / "order.sqlite3")
    return environ.get("ORDER_DATABASE_URL", default)


def describe(lease: Lease, now: float) -> dict[str, Any]:
    order = lease.order
    last = order.steps[-1] if order.steps else None
    return {
        "order_id": order.order_id,
        "user_id": order.user_id,
        "status": order.status.value,
        "phase": "compensating" if order.cancel_reason else "forward",
        "last_step": f"{last.name}:{last.outcome.value}" if last else "-",
        "updated": order.update_time,
        "lease_owner": lease.owner or "-",
        "lease_left_s": round(max(0.0, lease.expires - now), 1) if lease.owner else 0.0,
        "reason": order.cancel_reason or order.status_reason,
    }


async def open_sagas(url: str, limit: int) -> list[Lease]:
    database = Database("order", url, workers=1)
    try:
        return await OrderStore(database).unfinished(limit=limit)
    finally:
        await database.close()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(prog="mesh sagas", description="order sagas that are not terminal")
    parser.add_argument("--database", default=database_url(environ), help="SQLite path or PostgreSQL DSN")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    options = parser.parse_args(argv)
    url = options.database
    if not url.startswith(("postgresql://", "postgres://")) and not Path(url).exists():
        print(f"mesh sagas: no order database at {url} (set ORDER_DATABASE_URL)", file=sys.stderr)
        return 2
    now = time.time()
    try:
        leases = asyncio.run(open_sagas(url, options.limit))
    except DependencyUnavailable as error:  # not migrated yet, or the server is away
        print(f"mesh sagas: {error}", file=sys.stderr)
        return 2
    rows = [describe(lease, now) for lease in leases]
    if options.json:
        for row in rows:
            print(json.dumps(row))
    elif not rows:
        print("no open sagas")
    else:
        columns = ("order_id", "status", "phase", "last_step", "lease_owner", "lease_left_s", "reason")
        print("\t".join(columns))
        for row in rows:
            print("\t".join(str(row[c]) for c in columns))
    return 1 if rows else 0


if __name__ == "__main__":
    sys.exit(main())
