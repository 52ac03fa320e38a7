"""Payment's own database: payments, and the invoices billing issued for confirmed orders.

Ownership is checked inside the same transaction that reads a payment: a payment the caller
may not act for is reported as not found, so its existence does not leak to other users.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mesh.identity import Principal
from services.common.database import Database, Row, Tx
from services.common.errors import FailedPrecondition, NotFound
from services.common.idempotency import RequestKey, claim
from services.common.values import utc_now
from services.payment.domain import (
    DOMAIN,
    Authorization,
    PaymentPolicy,
    PaymentState,
    check_limit,
    check_replay,
    may_capture,
    may_refund,
    may_void,
)


@dataclass(frozen=True)
class PaymentRecord:
    payment_id: str
    order_id: str
    user_id: str
    amount_minor: int
    currency: str
    state: PaymentState
    create_time: str
    update_time: str

    @property
    def terms(self) -> Authorization:
        """What the payment was authorized for, to compare a re-sent request against."""
        return Authorization(self.payment_id, self.order_id, self.user_id, self.amount_minor, self.currency)


@dataclass(frozen=True)
class InvoiceRecord:
    invoice_id: str
    payment_id: str
    order_id: str
    user_id: str
    amount_minor: int
    currency: str
    create_time: str


def _payment(row: Row) -> PaymentRecord:
    return PaymentRecord(
        row["payment_id"],
        row["order_id"],
        row["user_id"],
        int(row["amount_minor"]),
        row["currency"],
        PaymentState(row["state"]),
        row["create_time"],
        row["update_time"],
    )


def _invoice(row: Row) -> InvoiceRecord:
    return InvoiceRecord(
        row["invoice_id"],
        row["payment_id"],
        row["order_id"],
        row["user_id"],
        int(row["amount_minor"]),
        row["currency"],
        row["create_time"],
    )


class PaymentStore:
    """Every read and write of payment data, each in one transaction."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def authorize(
        self, authorization: Authorization, policy: PaymentPolicy, key: RequestKey | None = None
    ) -> PaymentRecord:
        """Store a new authorization, or return the existing one for a re-sent request.

        The decline rule runs after the replay check, so a payment authorized earlier is still
        returned to a re-sent request even if the limit has been lowered since. Both keys are
        checked: the payment id against the stored terms, the request_id against its fingerprint.
        """

        def work(tx: Tx) -> PaymentRecord:
            claim(tx, key, DOMAIN)
            try:
                check_limit(authorization, policy)
            except FailedPrecondition:
                existing = self._find(tx, authorization.payment_id)  # authorized before the limit fell?
                if existing is None:
                    raise
            else:
                # A new payment is one INSERT, no read first. A re-send, or a concurrent twin that
                # committed first, finds the payment id taken and is compared with what is stored.
                now = utc_now()
                row = tx.one(
                    "INSERT INTO payments (payment_id, order_id, user_id, amount_minor, currency, state, "
                    "create_time, update_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (payment_id) DO NOTHING "
                    "RETURNING *",
                    (
                        authorization.payment_id,
                        authorization.order_id,
                        authorization.user_id,
                        authorization.amount_minor,
                        authorization.currency,
                        PaymentState.AUTHORIZED.value,
                        now,
                        now,
                    ),
                )
                existing = (
                    _payment(row) if row is not None else self._payment_in(tx, authorization.payment_id)
                )
            check_replay(existing.terms, authorization)
            return existing

        return await self._db.transact(work)

    async def capture(
        self, payment_id: str, caller: Principal, key: RequestKey | None = None
    ) -> PaymentRecord:
        """AUTHORIZED -> CAPTURED; a re-capture changes nothing.

        The invoice is not written here: billing issues it when the order is confirmed
        (services/payment/billing.py, from the order.confirmed event).
        """

        def work(tx: Tx) -> PaymentRecord:
            claim(tx, key, DOMAIN)
            # The common case first: an authorized payment moves in one UPDATE, no read first.
            # One the caller may not see is refused after it, and the refusal rolls it back.
            row = _move_from(tx, payment_id, PaymentState.AUTHORIZED, PaymentState.CAPTURED)
            if row is not None:
                if not caller.may_act_for(row["user_id"]):
                    raise NotFound(f"payment '{payment_id}' not found")
                return _payment(row)
            return self._move(tx, self._visible(tx, payment_id, caller), may_capture, PaymentState.CAPTURED)[
                0
            ]

        return await self._db.transact(work)

    async def void(
        self, payment_id: str, caller: Principal, key: RequestKey | None = None
    ) -> PaymentRecord | None:
        """AUTHORIZED -> VOIDED; None (a no-op) for an unknown payment, so compensations can repeat."""

        def work(tx: Tx) -> PaymentRecord | None:
            claim(tx, key, DOMAIN)
            record = self._find(tx, payment_id)
            if record is None or not caller.may_act_for(record.user_id):
                return None
            return self._move(tx, record, may_void, PaymentState.VOIDED)[0]

        return await self._db.transact(work)

    async def refund(
        self, payment_id: str, caller: Principal, key: RequestKey | None = None
    ) -> PaymentRecord:
        """CAPTURED -> REFUNDED; a re-sent refund changes nothing."""

        def work(tx: Tx) -> PaymentRecord:
            claim(tx, key, DOMAIN)
            return self._move(tx, self._visible(tx, payment_id, caller), may_refund, PaymentState.REFUNDED)[0]

        return await self._db.transact(work)

    async def get_payment(self, payment_id: str, caller: Principal) -> PaymentRecord:
        return await self._db.read(lambda tx: self._visible(tx, payment_id, caller))

    async def get_invoice(self, invoice_id: str, caller: Principal) -> InvoiceRecord:
        row = await self._db.read(
            lambda tx: tx.one("SELECT * FROM invoices WHERE invoice_id = ?", (invoice_id,))
        )
        if row is None or not caller.may_act_for(row["user_id"]):
            raise NotFound(f"invoice '{invoice_id}' not found")
        return _invoice(row)

    async def list_invoices(
        self, user_id: str | None, after: tuple[str, str] | None, limit: int
    ) -> list[InvoiceRecord]:
        """Invoices newest first, of one user (or everyone's for None), after a page position."""
        where: list[str] = []
        params: list[object] = []
        if user_id is not None:
            where.append("user_id = ?")
            params.append(user_id)
        if after is not None:
            where.append("(create_time < ? OR (create_time = ? AND invoice_id < ?))")
            params.extend((after[0], after[0], after[1]))
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        sql = f"SELECT * FROM invoices {clause}ORDER BY create_time DESC, invoice_id DESC LIMIT ?"
        rows = await self._db.read(lambda tx: tx.query(sql, (*params, limit)))
        return [_invoice(r) for r in rows]

    def _move(
        self,
        tx: Tx,
        record: PaymentRecord,
        allowed: Callable[[PaymentState], bool],
        target: PaymentState,
    ) -> tuple[PaymentRecord, bool]:
        """Move ``record`` to ``target`` if ``allowed``; True when this transaction moved it.

        The UPDATE names the state it saw, so of several concurrent callers exactly one moves
        the payment; a loser re-reads the committed state and decides again (states only move
        forward, so this ends).
        """
        while allowed(record.state):
            row = _move_from(tx, record.payment_id, record.state, target)
            if row is not None:
                return _payment(row), True
            record = self._payment_in(tx, record.payment_id)
        return record, False

    def _visible(self, tx: Tx, payment_id: str, caller: Principal) -> PaymentRecord:
        record = self._find(tx, payment_id)
        if record is None or not caller.may_act_for(record.user_id):
            raise NotFound(f"payment '{payment_id}' not found")
        return record

    @staticmethod
    def _find(tx: Tx, payment_id: str) -> PaymentRecord | None:
        row = tx.one("SELECT * FROM payments WHERE payment_id = ?", (payment_id,))
        return _payment(row) if row is not None else None

    @staticmethod
    def _payment_in(tx: Tx, payment_id: str) -> PaymentRecord:
        row = tx.one("SELECT * FROM payments WHERE payment_id = ?", (payment_id,))
        if row is None:
            raise NotFound(f"payment '{payment_id}' not found")
        return _payment(row)


def _move_from(tx: Tx, payment_id: str, seen: PaymentState, target: PaymentState) -> Row | None:
    """Move the payment to ``target`` if it is still in ``seen``; the row as written, or None."""
    return tx.one(
        "UPDATE payments SET state = ?, update_time = ? WHERE payment_id = ? AND state = ? RETURNING *",
        (target.value, utc_now(), payment_id, seen.value),
    )
