"""Start-up shared by every service's ``__main__``: logs, database, migrations, serve.

A service supplies only what is its own (its migrations folder and how to build its hosted
services from the open database); the order of start-up and shutdown lives here once.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from mesh.identity import JwtVerifier
from mesh.server import HostedService, serve
from mesh.telemetry.logs import configure_logging
from services.common.auth import Authenticator
from services.common.database import Database
from services.common.errors import StatusInterceptor
from services.common.migrations import migrate
from services.common.settings import ServiceSettings, service_settings_from_env

log = logging.getLogger(__name__)

Builder = Callable[[ServiceSettings, Database, Authenticator], Awaitable[Sequence[HostedService]]]


async def run(settings: ServiceSettings, migrations: Path, build: Builder) -> None:
    """Open the database, migrate, serve until signalled, then close the database."""
    database = Database(settings.name, settings.database_url)
    try:
        await migrate(database, migrations)
        authenticator = Authenticator(JwtVerifier(settings.jwt))
        services = await build(settings, database, authenticator)
        await serve(settings.server, services, interceptors=[StatusInterceptor()])
    finally:
        await database.close()


def main(name: str, migrations: Path, build: Builder) -> None:
    """Entry point of ``python -m services.<name>``."""
    settings = service_settings_from_env(name, os.environ)
    configure_logging(name, settings.log_level)
    asyncio.run(run(settings, migrations, build))
