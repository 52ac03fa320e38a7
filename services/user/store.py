"""The user service's own database: accounts, their password hashes and roles.

Email uniqueness and registration idempotency are both enforced by UNIQUE constraints and
``INSERT … ON CONFLICT DO NOTHING``: on PostgreSQL a concurrent insert of the same email waits
for the first transaction and then inserts nothing, on SQLite writers are serialized, so
exactly one of any number of simultaneous registrations wins on either engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from services.common.database import Database, Row, Tx
from services.common.idempotency import RequestKey, claim
from services.common.values import new_id, utc_now
from services.user.domain import Role, user_not_found

DOMAIN = "shop.user"


@dataclass(frozen=True)
class NewUser:
    """An account to create; the password is already hashed."""

    email: str
    display_name: str
    password_hash: str = field(repr=False)
    roles: tuple[Role, ...]
    request_id: str = ""


@dataclass(frozen=True)
class Signup:
    """What one CreateUser request_id registered: the request's terms and the id answered."""

    request_id: str
    user_id: str
    email: str
    display_name: str
    password_hash: str = field(repr=False)
    create_time: str


class _KeyTaken(Exception):
    """A concurrent registration with the same request_id committed first."""


@dataclass(frozen=True)
class UserRecord:
    user_id: str
    email: str
    display_name: str
    roles: tuple[Role, ...]
    password_hash: str = field(repr=False)
    create_time: str
    update_time: str


def _user(row: Row) -> UserRecord:
    roles = row["roles"] if isinstance(row["roles"], list) else json.loads(row["roles"])
    return UserRecord(
        user_id=row["user_id"],
        email=row["email"],
        display_name=row["display_name"],
        roles=tuple(Role(r) for r in roles),
        password_hash=row["password_hash"],
        create_time=row["create_time"],
        update_time=row["update_time"],
    )


class UserStore:
    """Every read and write of user data, each in one transaction."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def create(self, user: NewUser) -> UserRecord | None:
        """Register an account without disclosing whether the email was taken.

        A free email gets the account. A taken email gets a decoy answer shaped like a new
        account (a fresh id, the request's own email and name, nothing stored in ``users``):
        the existing account is neither changed nor described. With a request_id the answer
        is remembered in ``signups``; None when that key was already taken (a re-send, or a
        reuse: the caller compares with :meth:`find_signup`, which needs the password).
        """

        def work(tx: Tx) -> UserRecord | None:
            if user.request_id and self._signup_in(tx, user.request_id) is not None:
                return None
            if self._insert(tx, user):
                record = self._by_email(tx, user.email)
            else:
                now = utc_now()
                record = UserRecord(new_id("usr"), user.email, user.display_name, user.roles, "", now, now)
            if user.request_id:
                added = tx.execute(
                    "INSERT INTO signups (request_id, user_id, email, display_name, password_hash, create_time) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (request_id) DO NOTHING",
                    (
                        user.request_id,
                        record.user_id,
                        user.email,
                        user.display_name,
                        user.password_hash,
                        record.create_time,
                    ),
                )
                if not added:  # a concurrent twin took the key first: undo ours, compare with it
                    raise _KeyTaken()
            return record

        try:
            return await self._db.transact(work)
        except _KeyTaken:
            return None

    async def find_signup(self, request_id: str) -> Signup | None:
        """What a CreateUser request_id registered (an account or a decoy), if anything."""
        return await self._db.read(lambda tx: self._signup_in(tx, request_id))

    async def answer(self, signup: Signup) -> UserRecord:
        """The answer to a re-sent registration: the account as it is now, or the decoy again."""
        row = await self._db.read(
            lambda tx: tx.one("SELECT * FROM users WHERE user_id = ?", (signup.user_id,))
        )
        if row is not None:
            return _user(row)
        return UserRecord(
            signup.user_id,
            signup.email,
            signup.display_name,
            (Role.CUSTOMER,),
            "",
            signup.create_time,
            signup.create_time,
        )

    @staticmethod
    def _signup_in(tx: Tx, request_id: str) -> Signup | None:
        row = tx.one("SELECT * FROM signups WHERE request_id = ?", (request_id,))
        if row is None:
            return None
        return Signup(
            row["request_id"],
            row["user_id"],
            row["email"],
            row["display_name"],
            row["password_hash"],
            row["create_time"],
        )

    async def create_if_absent(self, user: NewUser) -> tuple[UserRecord, bool]:
        """The account with ``user.email``, and whether it was created now (for seeding)."""

        def work(tx: Tx) -> tuple[UserRecord, bool]:
            created = self._insert(tx, user)
            return self._by_email(tx, user.email), created

        return await self._db.transact(work)

    async def find_by_email(self, email: str) -> UserRecord | None:
        row = await self._db.read(lambda tx: tx.one("SELECT * FROM users WHERE email = ?", (email,)))
        return _user(row) if row is not None else None

    async def get(self, user_id: str) -> UserRecord:
        return await self._db.read(lambda tx: self._by_id(tx, user_id))

    async def update_display_name(
        self, user_id: str, display_name: str, key: RequestKey | None = None
    ) -> UserRecord:
        """Rename; a re-sent request (same ``key``, same name) changes nothing more."""

        def work(tx: Tx) -> UserRecord:
            if not claim(tx, key, DOMAIN):
                return self._by_id(tx, user_id)
            changed = tx.execute(
                "UPDATE users SET display_name = ?, update_time = ? WHERE user_id = ?",
                (display_name, utc_now(), user_id),
            )
            if not changed:
                raise user_not_found(user_id)
            return self._by_id(tx, user_id)

        return await self._db.transact(work)

    async def list(self, after: tuple[str, str] | None, limit: int) -> list[UserRecord]:
        """Up to ``limit`` users after the (create_time, user_id) position, oldest first."""
        create_time, user_id = after or ("", "")
        rows = await self._db.read(
            lambda tx: tx.query(
                "SELECT * FROM users WHERE create_time > ? OR (create_time = ? AND user_id > ?) "
                "ORDER BY create_time, user_id LIMIT ?",
                (create_time, create_time, user_id, limit),
            )
        )
        return [_user(r) for r in rows]

    @staticmethod
    def _insert(tx: Tx, user: NewUser) -> bool:
        """Insert unless the email (or request_id) exists; True when a row was added."""
        now = utc_now()
        added = tx.execute(
            "INSERT INTO users (user_id, email, display_name, password_hash, roles, request_id, "
            "create_time, update_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (
                new_id("usr"),
                user.email,
                user.display_name,
                user.password_hash,
                json.dumps([r.value for r in user.roles]),
                user.request_id or None,
                now,
                now,
            ),
        )
        return added == 1

    @staticmethod
    def _by_email(tx: Tx, email: str) -> UserRecord:
        row = tx.one("SELECT * FROM users WHERE email = ?", (email,))
        if row is None:
            raise AssertionError(f"user with email '{email}' vanished inside its transaction")
        return _user(row)

    @staticmethod
    def _by_id(tx: Tx, user_id: str) -> UserRecord:
        row = tx.one("SELECT * FROM users WHERE user_id = ?", (user_id,))
        if row is None:
            raise user_not_found(user_id)
        return _user(row)
