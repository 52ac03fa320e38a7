"""Start-up shared by every shop service's ``__main__``: a mesh service plus its database.

A service supplies only what is its own (its migrations and how to build its hosted services
from a :class:`ServiceContext`). The order of start-up and shutdown is :func:`mesh.app.run_app`'s
(telemetry, identity, discovery; then the service; registration; drain; close in reverse); the
shop adds its database (opened and migrated before the service is built, closed after the
server drained) and the users' token verifier.

Under mTLS (the default) the process first takes its certificate for its own name from the
local Consul agent (:func:`mesh.connect.setup.connect_workload`): the server then requires
client certificates and asks intentions who may call, and every channel it opens presents
that identity and checks the server's. ``MESH_INSECURE=1`` runs plaintext, loudly.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.app import AppContext, run_app, run_service
from mesh.logs.setup import configure_logging
from mesh.server import HostedService
from mesh.verifier import JwtVerifier
from services.common.auth import Authenticator
from services.common.database import Database
from services.common.errors import StatusInterceptor
from services.common.migrations import migrate
from services.common.settings import ServiceSettings, service_settings_from_env


@dataclass(kw_only=True)
class ServiceContext(AppContext):
    """What a shop service's builder gets: a mesh service's context (:class:`mesh.app.AppContext`:
    settings, discovery, channels, metrics registry, identity), its database and authenticator."""

    settings: ServiceSettings
    database: Database
    auth: Authenticator


Builder = Callable[[ServiceContext], Awaitable[Sequence[HostedService]]]


async def run(settings: ServiceSettings, migrations: Path, build: Builder) -> None:
    """Serve as a mesh service (:func:`mesh.app.run_app`) whose builder first opens and migrates
    the service's database and makes its authenticator; all close after the server drained."""

    async def build_shop_service(app: AppContext) -> Sequence[HostedService]:
        database = Database(settings.name, settings.database_url)
        app.resources.push_async_callback(database.close)
        await migrate(database, migrations)
        authenticator = Authenticator(
            JwtVerifier(settings.jwt),
            insecure=settings.security.insecure,
            trusted_callers=settings.trusted_callers,
        )
        shared = {f.name: getattr(app, f.name) for f in dataclasses.fields(app) if f.name != "settings"}
        return await build(ServiceContext(**shared, settings=settings, database=database, auth=authenticator))

    await run_app(settings, build_shop_service, status=StatusInterceptor())


def main(name: str, migrations: Path, build: Builder, policy: Mapping[str, Any] | None = None) -> None:
    """Entry point of ``python -m services.<name>``; ``policy`` is the service's built-in call
    policy (a tree in the policy file's format), below every key of MESH_POLICY_FILE/_*."""
    settings = service_settings_from_env(name, os.environ, policy)
    configure_logging(name, settings.log_level)
    run_service(run(settings, migrations, build))
