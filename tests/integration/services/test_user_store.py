"""The user store against a real SQLite file and the real PostgreSQL server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.common.database import Database
from services.common.errors import NotFound
from services.common.migrations import migrate
from services.user.domain import ADMIN_ROLES, CUSTOMER_ROLES, Role
from services.user.store import NewUser, UserRecord, UserStore

MIGRATIONS = Path("services/user/migrations")
HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="


def new_user(email: str = "ada@example.com", request_id: str = "", name: str = "Ada") -> NewUser:
    return NewUser(email, name, HASH, CUSTOMER_ROLES, request_id)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[UserStore]:
    database = Database("user", database_url)
    await migrate(database, MIGRATIONS)
    yield UserStore(database)
    await database.close()


async def test_migrations_are_idempotent(database_url: str) -> None:
    database = Database("user", database_url)
    try:
        assert await migrate(database, MIGRATIONS) == [1, 2, 3]  # 003: request keys, signups
        assert await migrate(database, MIGRATIONS) == []
    finally:
        await database.close()


async def created_new(store: UserStore, user: NewUser) -> UserRecord:
    """Create an account that must be new (not a taken key)."""
    record = await store.create(user)
    assert record is not None
    return record


async def test_create_then_read_back(store: UserStore) -> None:
    created = await created_new(store, NewUser("ada@example.com", "Ada", HASH, ADMIN_ROLES))
    assert created.user_id.startswith("usr_")
    assert created.roles == (Role.ADMIN, Role.CUSTOMER)
    assert created.password_hash == HASH
    assert await store.get(created.user_id) == created
    assert await store.find_by_email("ada@example.com") == created
    assert await store.find_by_email("nobody@example.com") is None
    assert HASH not in repr(created)


async def test_a_taken_email_gets_a_decoy_and_changes_nothing(store: UserStore) -> None:
    ada = await store.create(new_user())
    decoy = await store.create(new_user(name="Other Ada"))
    assert ada is not None and decoy is not None
    assert decoy.user_id != ada.user_id and decoy.display_name == "Other Ada" and not decoy.password_hash
    assert await store.list(None, 10) == [ada]


async def test_request_id_returns_the_first_result(store: UserStore) -> None:
    first = await store.create(new_user(request_id="req-1"))
    assert first is not None
    assert await store.create(new_user(request_id="req-1", name="Changed")) is None  # the key is taken
    signup = await store.find_signup("req-1")
    assert signup is not None and (signup.user_id, signup.display_name) == (first.user_id, "Ada")
    assert await store.answer(signup) == first
    listed = await store.list(None, 10)
    assert [u.user_id for u in listed] == [first.user_id]


async def test_request_id_reused_for_another_email_is_refused(store: UserStore) -> None:
    await store.create(new_user(request_id="req-1"))
    assert await store.create(new_user("eve@example.com", request_id="req-1")) is None
    assert await store.find_by_email("eve@example.com") is None


async def test_ten_concurrent_registrations_of_one_email_make_one_account(store: UserStore) -> None:
    results = await asyncio.gather(
        *(store.create(new_user(request_id=f"req-{n}", name=f"Ada {n}")) for n in range(10))
    )
    accounts = await store.list(None, 100)
    assert len(accounts) == 1 and sum(r == accounts[0] for r in results) == 1


async def test_concurrent_retries_of_one_request_id_all_get_the_same_account(store: UserStore) -> None:
    results = await asyncio.gather(*(store.create(new_user(request_id="req-same")) for _ in range(10)))
    made = [r for r in results if r is not None]
    signup = await store.find_signup("req-same")
    assert len(made) == 1 and signup is not None and signup.user_id == made[0].user_id
    assert len(await store.list(None, 100)) == 1


async def test_update_display_name(store: UserStore) -> None:
    created = await created_new(store, new_user())
    updated = await store.update_display_name(created.user_id, "Countess")
    assert updated.display_name == "Countess"
    assert updated.update_time >= created.update_time and updated.create_time == created.create_time
    with pytest.raises(NotFound):
        await store.update_display_name("usr_missing", "X")
    with pytest.raises(NotFound):
        await store.get("usr_missing")


async def test_list_pages_oldest_first_without_gaps_or_repeats(store: UserStore) -> None:
    made = [(await created_new(store, new_user(f"u{n}@example.com"))).user_id for n in range(7)]
    seen: list[str] = []
    after = None
    while True:
        page = await store.list(after, 3)
        seen += [u.user_id for u in page]
        if len(page) < 3:
            break
        after = (page[-1].create_time, page[-1].user_id)
    assert seen == made


async def test_create_if_absent_creates_once(store: UserStore) -> None:
    admin = NewUser("admin@example.com", "Admin", HASH, ADMIN_ROLES)
    first, created = await store.create_if_absent(admin)
    again, created_again = await store.create_if_absent(admin)
    assert created and not created_again
    assert again == first
