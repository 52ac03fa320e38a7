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
from services.common.errors import AlreadyExists
from services.common.values import new_id, utc_now
from services.user.domain import Role, user_not_found


@dataclass(frozen=True)
class NewUser:
    """An account to create; the password is already hashed."""

    email: str
    display_name: str
    password_hash: str = field(repr=False)
    roles: tuple[Role, ...]
    request_id: str = ""


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

    async def create(self, user: NewUser) -> UserRecord:
        """Insert an account; a known request_id returns the account it created.

        ALREADY_EXISTS when the email is taken, or when the request_id was used to register
        a different email (replaying someone else's key must not disclose their account).
        """

        def work(tx: Tx) -> UserRecord:
            if self._insert(tx, user):
                return self._by_email(tx, user.email)
            if user.request_id:
                first = tx.one("SELECT * FROM users WHERE request_id = ?", (user.request_id,))
                if first is not None:
                    if first["email"] != user.email:
                        raise AlreadyExists(
                            f"request_id '{user.request_id}' was used for another registration"
                        )
                    return _user(first)
            raise AlreadyExists(f"an account with email '{user.email}' already exists")

        return await self._db.transact(work)

    async def create_if_absent(self, user: NewUser) -> tuple[UserRecord, bool]:
        """The account with ``user.email``, and whether it was created now (for seeding)."""

        def work(tx: Tx) -> tuple[UserRecord, bool]:
            created = self._insert(tx, user)
            return self._by_email(tx, user.email), created

        return await self._db.transact(work)

    async def find_by_email(self, email: str) -> UserRecord | None:
        row = await self._db.transact(lambda tx: tx.one("SELECT * FROM users WHERE email = ?", (email,)))
        return _user(row) if row is not None else None

    async def get(self, user_id: str) -> UserRecord:
        return await self._db.transact(lambda tx: self._by_id(tx, user_id))

    async def update_display_name(self, user_id: str, display_name: str) -> UserRecord:
        def work(tx: Tx) -> UserRecord:
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
        rows = await self._db.transact(
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
