"""Shipping's own database: shipments.

Ownership is checked inside the same transaction that reads a shipment: a shipment the
caller may not act for is reported as not found, so its existence does not leak to other users.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mesh.identity import Principal
from services.common.database import Database, Row, Tx
from services.common.errors import FailedPrecondition, NotFound
from services.common.idempotency import RequestKey, claim
from services.common.values import utc_now
from services.shipping.domain import (
    DOMAIN,
    Address,
    Schedule,
    ShipmentState,
    ShippingPolicy,
    check_destination,
    check_replay,
    estimated_delivery,
    may_cancel,
    tracking_number,
)


@dataclass(frozen=True)
class ShipmentRecord:
    shipment_id: str
    order_id: str
    user_id: str
    address: Address
    state: ShipmentState
    tracking_number: str
    estimated_delivery_time: str
    create_time: str
    update_time: str

    @property
    def terms(self) -> Schedule:
        """What the shipment was scheduled for, to compare a re-sent request against."""
        return Schedule(self.shipment_id, self.order_id, self.user_id, self.address)


def _shipment(row: Row) -> ShipmentRecord:
    return ShipmentRecord(
        row["shipment_id"],
        row["order_id"],
        row["user_id"],
        Address(row["recipient"], row["line1"], row["city"], row["postal_code"], row["country_code"]),
        ShipmentState(row["state"]),
        row["tracking_number"],
        row["estimated_delivery_time"],
        row["create_time"],
        row["update_time"],
    )


class ShippingStore:
    """Every read and write of shipping data, each in one transaction."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def schedule(
        self, schedule: Schedule, policy: ShippingPolicy, key: RequestKey | None = None
    ) -> ShipmentRecord:
        """Store a new shipment, or return the existing one for a re-sent request.

        The refusal rule runs after the replay check, so a shipment scheduled earlier is still
        returned to a re-sent request even if the supported countries have changed since.
        """

        def work(tx: Tx) -> ShipmentRecord:
            claim(tx, key, DOMAIN)
            try:
                check_destination(schedule, policy)
            except FailedPrecondition:
                existing = self._find(tx, schedule.shipment_id)  # scheduled before the rule changed?
                if existing is None:
                    raise
            else:
                # A new shipment is one INSERT, no read first. A re-send, or a concurrent twin that
                # committed first, finds the shipment id taken and is compared with what is stored.
                now = utc_now()
                eta = estimated_delivery(datetime.fromisoformat(now), policy).isoformat(
                    timespec="microseconds"
                )
                a = schedule.address
                row = tx.one(
                    "INSERT INTO shipments (shipment_id, order_id, user_id, recipient, line1, city, postal_code, "
                    "country_code, state, tracking_number, estimated_delivery_time, create_time, update_time) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (shipment_id) DO NOTHING RETURNING *",
                    (
                        schedule.shipment_id,
                        schedule.order_id,
                        schedule.user_id,
                        a.recipient,
                        a.line1,
                        a.city,
                        a.postal_code,
                        a.country_code,
                        ShipmentState.SCHEDULED.value,
                        tracking_number(schedule.shipment_id),
                        eta,
                        now,
                        now,
                    ),
                )
                existing = _shipment(row) if row is not None else self._shipment_in(tx, schedule.shipment_id)
            check_replay(existing.terms, schedule)
            return existing

        return await self._db.transact(work)

    async def cancel(
        self, shipment_id: str, caller: Principal, key: RequestKey | None = None
    ) -> ShipmentRecord | None:
        """SCHEDULED -> CANCELLED; None (a no-op) for an unknown shipment, so compensations can repeat."""

        def work(tx: Tx) -> ShipmentRecord | None:
            claim(tx, key, DOMAIN)
            record = self._find(tx, shipment_id)
            if record is None or not caller.may_act_for(record.user_id):
                return None
            if may_cancel(record.state):
                # Conditional on the state seen: a concurrent cancel that won leaves nothing to do.
                row = tx.one(
                    "UPDATE shipments SET state = ?, update_time = ? WHERE shipment_id = ? AND state = ? RETURNING *",
                    (ShipmentState.CANCELLED.value, utc_now(), shipment_id, record.state.value),
                )
                record = _shipment(row) if row is not None else self._shipment_in(tx, shipment_id)
            return record

        return await self._db.transact(work)

    async def get(self, shipment_id: str, caller: Principal) -> ShipmentRecord:
        record = await self._db.read(lambda tx: self._find(tx, shipment_id))
        if record is None or not caller.may_act_for(record.user_id):
            raise NotFound(f"shipment '{shipment_id}' not found")
        return record

    @staticmethod
    def _find(tx: Tx, shipment_id: str) -> ShipmentRecord | None:
        row = tx.one("SELECT * FROM shipments WHERE shipment_id = ?", (shipment_id,))
        return _shipment(row) if row is not None else None

    @staticmethod
    def _shipment_in(tx: Tx, shipment_id: str) -> ShipmentRecord:
        row = tx.one("SELECT * FROM shipments WHERE shipment_id = ?", (shipment_id,))
        if row is None:
            raise NotFound(f"shipment '{shipment_id}' not found")
        return _shipment(row)
