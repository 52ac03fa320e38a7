"""``python -m services.user``: the user service process."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

from mesh.server import HostedService
from services.common.app import ServiceContext, main
from services.user.hashing import PasswordHasher
from services.user.notifications import NotificationStore, start_notifications
from services.user.servicer import UserServicer
from services.user.settings import UserSettings, user_settings_from_env
from services.user.store import UserStore
from services.user.throttle import LoginThrottle
from services.user.tokens import TokenIssuer
from shop.user.v1 import user_pb2, user_pb2_grpc

SERVICE = user_pb2.DESCRIPTOR.services_by_name["UserService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"


async def build(context: ServiceContext, own: UserSettings) -> Sequence[HostedService]:
    settings, database, auth = context.settings, context.database, context.auth
    # First, so a missing or unusable signing key stops the process with ConfigError.
    issuer = TokenIssuer(settings.jwt)
    notifications = NotificationStore(database)
    throttle = LoginThrottle(own.login)  # in memory: each instance enforces its own limits
    servicer = UserServicer(UserStore(database), auth, PasswordHasher(), issuer, notifications, throttle)
    start_notifications(context, own.notifications)  # with the bus on: one per order event
    return [
        HostedService(
            SERVICE, lambda server: user_pb2_grpc.add_UserServiceServicer_to_server(servicer, server)
        )
    ]


if __name__ == "__main__":
    own = user_settings_from_env(os.environ)  # first: a bad value stops the process here
    main("user", MIGRATIONS, functools.partial(build, own=own))
