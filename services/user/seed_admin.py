"""``python -m services.user.seed_admin``: make sure the demo admin account exists.

``make run`` calls this so a fresh shop has someone who may restock and list users. It
reads the same database settings as the service (``USER_DATABASE_URL`` / ``MESH_DATA_DIR``),
migrates, and creates ``MESH_ADMIN_EMAIL`` with ``MESH_ADMIN_PASSWORD`` (roles admin and
customer) unless that email is registered already; running it again changes nothing.

It prints the credentials because the issue asks for exactly that: they are the local demo
defaults, and this is the only place a password is ever printed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from mesh.config import env_str
from services.common.database import Database
from services.common.errors import InvalidArgument
from services.common.migrations import migrate
from services.common.settings import service_settings_from_env
from services.user import domain
from services.user.store import NewUser, UserStore

MIGRATIONS = Path(__file__).parent / "migrations"
DEFAULT_EMAIL = "admin@example.com"
DEFAULT_PASSWORD = "change-me-admin"  # the documented local demo default
DISPLAY_NAME = "Admin"


async def seed(environ: Mapping[str, str]) -> str:
    """Create the admin if missing; returns the line to print."""
    settings = service_settings_from_env("user", environ)
    email = env_str(environ, "MESH_ADMIN_EMAIL", DEFAULT_EMAIL)
    password = environ.get("MESH_ADMIN_PASSWORD") or DEFAULT_PASSWORD
    registration = domain.validate_registration(email, password, DISPLAY_NAME, "")
    database = Database(settings.name, settings.database_url)
    try:
        await migrate(database, MIGRATIONS)
        new = NewUser(registration.email, DISPLAY_NAME, domain.hash_password(password), domain.ADMIN_ROLES)
        record, created = await UserStore(database).create_if_absent(new)
    finally:
        await database.close()
    if created:
        return f"admin account seeded: {record.email} / {password}"
    if domain.Role.ADMIN not in record.roles:
        return f"{record.email} is already registered without the admin role; left unchanged"
    if domain.verify_password(password, record.password_hash):
        return f"admin account present: {record.email} / {password}"
    return f"admin account present: {record.email} (its password differs from MESH_ADMIN_PASSWORD)"


def main() -> int:
    try:
        print(asyncio.run(seed(os.environ)))
    except InvalidArgument as error:
        print(f"cannot seed the admin account: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
