"""The payment store against a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.identity import Principal
from services.common.database import Database, Tx
from services.common.errors import AlreadyExists, FailedPrecondition, NotFound
from services.common.migrations import migrate, migration_files
from services.common.values import money
from services.payment.billing import issue_invoice
from services.payment.domain import Authorization, PaymentPolicy, PaymentState
from services.payment.store import PaymentStore
from shop.order.v1 import events_pb2, order_pb2

MIGRATIONS = Path("services/payment/migrations")
POLICY = PaymentPolicy(decline_above_minor=100_000)
OWNER = Principal("u-1", frozenset({"customer"}))
STRANGER = Principal("u-2", frozenset({"customer"}))
ADMIN = Principal("admin-1", frozenset({"admin"}))
SAGA = Principal("order", frozenset({"service"}))
WARM_UP = 8  # more than the database's worker threads


def terms(payment_id: str = "p-1", amount_minor: int = 1250, user_id: str = "u-1") -> Authorization:
    return Authorization(payment_id, f"o-{payment_id}", user_id, amount_minor, "EUR")


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database("payment", database_url)
    await migrate(database, MIGRATIONS)
    yield database
    await database.close()


@pytest.fixture
def store(database: Database) -> PaymentStore:
    return PaymentStore(database)


async def count(database: Database, table: str) -> int:
    row = await database.transact(lambda tx: tx.one(f"SELECT COUNT(*) AS n FROM {table}"))
    assert row is not None
    return int(row["n"])


async def bill(
    database: Database,
    payment_id: str,
    user_id: str = "u-1",
    amount_minor: int = 1250,
    kind: int = events_pb2.ORDER_EVENT_KIND_CONFIRMED,
) -> None:
    """What the billing consumer does for an order event of the order paid by ``payment_id``."""
    order = order_pb2.Order(
        order_id=f"o-{payment_id}", user_id=user_id, payment_id=payment_id, total=money(amount_minor, "EUR")
    )
    event = events_pb2.OrderEvent(event_id=f"e-{payment_id}-{kind}", kind=kind, order=order)  # type: ignore[arg-type]
    await database.transact(lambda tx: issue_invoice(tx, event))


async def open_every_connection(store: PaymentStore) -> None:
    """Overlapping calls open each worker thread's connection, so the race that follows is real.

    Without this, connecting staggers the first calls enough that they rarely overlap.
    """
    await asyncio.gather(*(store.authorize(terms(f"warm-{n}"), POLICY) for n in range(WARM_UP)))


async def test_migrations_are_idempotent(database_url: str) -> None:
    database = Database("payment", database_url)
    try:
        assert await migrate(database, MIGRATIONS) == [1, 2, 3]  # 003: request keys
        assert await migrate(database, MIGRATIONS) == []
    finally:
        await database.close()


async def test_authorize_twice_with_one_id_makes_one_payment(store: PaymentStore, database: Database) -> None:
    first = await store.authorize(terms(), POLICY)
    again = await store.authorize(terms(), POLICY)
    assert first == again
    assert first.state is PaymentState.AUTHORIZED
    assert await count(database, "payments") == 1


async def test_concurrent_authorizations_with_one_id_make_one_payment(
    store: PaymentStore, database: Database
) -> None:
    await open_every_connection(store)
    results = await asyncio.gather(*(store.authorize(terms(), POLICY) for _ in range(10)))
    assert len(set(results)) == 1
    assert await count(database, "payments") == 1 + WARM_UP


@pytest.mark.parametrize(
    "conflicting",
    [
        terms(amount_minor=1251),
        terms(user_id="u-9"),
        Authorization("p-1", "o-other", "u-1", 1250, "EUR"),
        Authorization("p-1", "o-p-1", "u-1", 1250, "USD"),
    ],
)
async def test_reusing_an_id_for_other_terms_is_refused(
    store: PaymentStore, conflicting: Authorization
) -> None:
    await store.authorize(terms(), POLICY)
    with pytest.raises(AlreadyExists):
        await store.authorize(conflicting, POLICY)


async def test_a_declined_payment_stores_nothing(store: PaymentStore, database: Database) -> None:
    with pytest.raises(FailedPrecondition) as raised:
        await store.authorize(terms(amount_minor=100_001), POLICY)
    assert raised.value.reason == "PAYMENT_DECLINED"
    assert await count(database, "payments") == 0
    assert (await store.authorize(terms(amount_minor=100_000), POLICY)).amount_minor == 100_000


async def test_a_replay_is_answered_even_after_the_limit_was_lowered(store: PaymentStore) -> None:
    await store.authorize(terms(amount_minor=5000), POLICY)
    again = await store.authorize(terms(amount_minor=5000), PaymentPolicy(decline_above_minor=100))
    assert again.state is PaymentState.AUTHORIZED


async def test_capture_moves_the_payment_once_and_issues_no_invoice(
    store: PaymentStore, database: Database
) -> None:
    await store.authorize(terms(), POLICY)
    captured = await store.capture("p-1", OWNER)
    assert captured.state is PaymentState.CAPTURED
    assert await store.capture("p-1", OWNER) == captured
    assert await count(database, "invoices") == 0  # billing issues it, on order.confirmed


async def test_billing_issues_one_invoice_per_confirmed_order(
    store: PaymentStore, database: Database
) -> None:
    await bill(database, "p-1")
    await bill(database, "p-1")  # the same order confirmed again: still one invoice
    await bill(database, "p-2", kind=events_pb2.ORDER_EVENT_KIND_CREATED)
    await bill(database, "p-3", kind=events_pb2.ORDER_EVENT_KIND_CANCELLED)
    invoices = await store.list_invoices("u-1", None, 10)
    assert [(i.payment_id, i.order_id, i.amount_minor, i.currency) for i in invoices] == [
        ("p-1", "o-p-1", 1250, "EUR")
    ]
    assert await store.get_invoice(invoices[0].invoice_id, OWNER) == invoices[0]
    assert await count(database, "invoices") == 1


async def test_ten_concurrent_captures_move_the_payment_once(store: PaymentStore) -> None:
    await store.authorize(terms(), POLICY)
    await open_every_connection(store)
    results = await asyncio.gather(*(store.capture("p-1", SAGA) for _ in range(10)))
    assert {r.state for r in results} == {PaymentState.CAPTURED}
    assert len({r.update_time for r in results}) == 1  # one capture; the others saw it done


def old_rows(tx: Tx) -> None:
    """Two captured payments and their invoices, as capture wrote them before billing existed."""
    for n in (1, 2):
        day = f"2025-01-0{n}"
        tx.execute(
            "INSERT INTO payments VALUES (?, ?, 'u-1', 700, 'EUR', 'CAPTURED', ?, ?)",
            (f"p-{n}", f"o-{n}", day, day),
        )
        tx.execute(
            "INSERT INTO invoices VALUES (?, ?, ?, 'u-1', 700, 'EUR', ?)",
            (f"inv-{n}", f"p-{n}", f"o-{n}", day),
        )


async def test_existing_invoices_survive_the_billing_migration(database_url: str, tmp_path: Path) -> None:
    """Data written under 001 (one invoice per captured payment) migrates cleanly to 002."""
    only_first = tmp_path / "migrations"
    only_first.mkdir()
    (only_first / "001_init.sql").write_text((MIGRATIONS / "001_init.sql").read_text())
    database = Database("payment", database_url)
    try:
        await migrate(database, only_first)
        await database.transact(old_rows)
        assert await migrate(database, MIGRATIONS) == [n for n, _ in migration_files(MIGRATIONS) if n > 1]
        store = PaymentStore(database)
        kept = await store.list_invoices("u-1", None, 10)
        assert [(i.invoice_id, i.payment_id, i.order_id) for i in kept] == [
            ("inv-2", "p-2", "o-2"),
            ("inv-1", "p-1", "o-1"),
        ]
        await bill(database, "2", amount_minor=700)  # order o-2 confirmed (again): no second invoice
        assert await count(database, "invoices") == 2
    finally:
        await database.close()


async def test_racing_captures_and_voids_leave_one_consistent_outcome(store: PaymentStore) -> None:
    await store.authorize(terms(), POLICY)

    async def attempt(n: int) -> PaymentState | str:
        try:
            if n % 2:
                record = await store.void("p-1", SAGA)
                assert record is not None
                return record.state
            return (await store.capture("p-1", SAGA)).state
        except FailedPrecondition as error:
            return error.reason

    outcomes = set(await asyncio.gather(*(attempt(n) for n in range(10))))
    final = (await store.get_payment("p-1", SAGA)).state
    if final is PaymentState.CAPTURED:
        assert outcomes <= {PaymentState.CAPTURED, "PAYMENT_CAPTURED"}
    else:
        assert final is PaymentState.VOIDED
        assert outcomes <= {PaymentState.VOIDED, "PAYMENT_VOIDED"}


async def test_void_moves_an_authorization_and_repeats(store: PaymentStore) -> None:
    await store.authorize(terms(), POLICY)
    voided = await store.void("p-1", OWNER)
    assert voided is not None and voided.state is PaymentState.VOIDED
    assert await store.void("p-1", OWNER) == voided
    with pytest.raises(FailedPrecondition) as raised:
        await store.capture("p-1", OWNER)
    assert raised.value.reason == "PAYMENT_VOIDED"


async def test_void_of_an_unknown_payment_is_a_noop(store: PaymentStore) -> None:
    assert await store.void("never-made", SAGA) is None


async def test_a_captured_payment_is_refunded_not_voided(store: PaymentStore) -> None:
    await store.authorize(terms(), POLICY)
    with pytest.raises(FailedPrecondition) as not_captured:
        await store.refund("p-1", OWNER)
    assert not_captured.value.reason == "PAYMENT_NOT_CAPTURED"
    await store.capture("p-1", OWNER)
    with pytest.raises(FailedPrecondition) as captured:
        await store.void("p-1", OWNER)
    assert captured.value.reason == "PAYMENT_CAPTURED"
    refunded = await store.refund("p-1", OWNER)
    assert refunded.state is PaymentState.REFUNDED
    assert await store.refund("p-1", OWNER) == refunded
    assert await store.capture("p-1", OWNER) == refunded  # a late re-sent capture changes nothing


async def test_refund_of_an_unknown_payment_is_not_found(store: PaymentStore) -> None:
    with pytest.raises(NotFound):
        await store.refund("never-made", OWNER)


async def test_other_users_cannot_see_or_move_a_payment(store: PaymentStore, database: Database) -> None:
    await store.authorize(terms(), POLICY)
    await store.capture("p-1", OWNER)
    await bill(database, "p-1")
    invoice = (await store.list_invoices("u-1", None, 1))[0]
    for action in (store.get_payment, store.capture, store.refund):
        with pytest.raises(NotFound):
            await action("p-1", STRANGER)
    with pytest.raises(NotFound):
        await store.get_invoice(invoice.invoice_id, STRANGER)
    assert await store.void("p-1", STRANGER) is None  # as if unknown; nothing changes
    assert (await store.get_payment("p-1", ADMIN)).state is PaymentState.CAPTURED
    assert await store.get_invoice(invoice.invoice_id, SAGA) == invoice


async def test_a_stranger_cannot_capture_an_authorized_payment(store: PaymentStore) -> None:
    """Capture moves an authorized payment before it looks at the owner: the refusal must undo
    that move."""
    await store.authorize(terms(), POLICY)
    with pytest.raises(NotFound):
        await store.capture("p-1", STRANGER)
    assert (await store.get_payment("p-1", ADMIN)).state is PaymentState.AUTHORIZED
    assert (await store.capture("p-1", OWNER)).state is PaymentState.CAPTURED


async def test_invoices_are_listed_newest_first_in_pages(store: PaymentStore, database: Database) -> None:
    for n, user in enumerate(("u-1", "u-2", "u-1", "u-1")):
        await bill(database, f"p-{n}", user_id=user)
    mine = await store.list_invoices("u-1", None, 10)
    assert [i.payment_id for i in mine] == ["p-3", "p-2", "p-0"]
    first = await store.list_invoices("u-1", None, 2)
    last = first[-1]
    rest = await store.list_invoices("u-1", (last.create_time, last.invoice_id), 2)
    assert [i.payment_id for i in first + rest] == ["p-3", "p-2", "p-0"]
    everyone = await store.list_invoices(None, None, 10)
    assert [i.payment_id for i in everyone] == ["p-3", "p-2", "p-1", "p-0"]
