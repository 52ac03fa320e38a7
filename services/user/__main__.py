"""``python -m services.user``: the user service process."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mesh.server import HostedService
from services.common.app import ServiceContext, main
from services.user.hashing import PasswordHasher
from services.user.notifications import NotificationStore, start_notifications
from services.user.servicer import UserServicer
from services.user.store import UserStore
from services.user.tokens import TokenIssuer
from shop.user.v1 import user_pb2, user_pb2_grpc

SERVICE = user_pb2.DESCRIPTOR.services_by_name["UserService"].full_name
MIGRATIONS = Path(__file__).parent / "migrations"


async def build(context: ServiceContext) -> Sequence[HostedService]:
    settings, database, auth = context.settings, context.database, context.auth
    # First, so a missing or unusable signing key stops the process with ConfigError.
    issuer = TokenIssuer(settings.jwt)
    notifications = NotificationStore(database)
    servicer = UserServicer(UserStore(database), auth, PasswordHasher(), issuer, notifications)
    start_notifications(context)  # with the bus on: a notification per order event
    return [
        HostedService(
            SERVICE, lambda server: user_pb2_grpc.add_UserServiceServicer_to_server(servicer, server)
        )
    ]


if __name__ == "__main__":
    main("user", MIGRATIONS, build)
