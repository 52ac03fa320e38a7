"""UserService over gRPC: proto in, domain and store, proto out; nothing more."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.auth import Authenticator
from services.common.values import page_size, timestamp
from services.user import domain
from services.user.domain import Role
from services.user.hashing import PasswordHasher
from services.user.notifications import NotificationKind, NotificationRecord, NotificationStore
from services.user.store import NewUser, UserRecord, UserStore
from services.user.tokens import TokenIssuer
from shop.user.v1 import user_pb2 as pb
from shop.user.v1 import user_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

ROLE_PB = {Role.CUSTOMER: pb.ROLE_CUSTOMER, Role.ADMIN: pb.ROLE_ADMIN}
TOKEN_TYPE = "Bearer"
KIND_PB = {
    NotificationKind.ORDER_CREATED: pb.NOTIFICATION_KIND_ORDER_CREATED,
    NotificationKind.ORDER_CONFIRMED: pb.NOTIFICATION_KIND_ORDER_CONFIRMED,
    NotificationKind.ORDER_CANCELLED: pb.NOTIFICATION_KIND_ORDER_CANCELLED,
}


def user_pb(record: UserRecord) -> pb.User:
    return pb.User(
        user_id=record.user_id,
        email=record.email,
        display_name=record.display_name,
        roles=[ROLE_PB[role] for role in record.roles],
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
    )


def notification_pb(record: NotificationRecord) -> pb.Notification:
    return pb.Notification(
        notification_id=record.notification_id,
        user_id=record.user_id,
        order_id=record.order_id,
        event_id=record.event_id,
        kind=KIND_PB[record.kind],
        text=record.text,
        create_time=timestamp(record.create_time),
    )


class UserServicer(user_pb2_grpc.UserServiceServicer):
    def __init__(
        self,
        store: UserStore,
        auth: Authenticator,
        hasher: PasswordHasher,
        issuer: TokenIssuer,
        notifications: NotificationStore,
    ) -> None:
        self._store = store
        self._notifications = notifications
        self._auth = auth
        self._hasher = hasher
        self._issuer = issuer

    async def CreateUser(self, request: pb.CreateUserRequest, context: Context) -> pb.CreateUserResponse:
        registration = domain.validate_registration(
            request.email, request.password, request.display_name, request.request_id
        )
        password_hash = await self._hasher.hash(request.password)
        record = await self._store.create(
            NewUser(
                registration.email,
                registration.display_name,
                password_hash,
                domain.CUSTOMER_ROLES,
                registration.request_id,
            )
        )
        return pb.CreateUserResponse(user=user_pb(record))

    async def Login(self, request: pb.LoginRequest, context: Context) -> pb.LoginResponse:
        email = domain.validate_login(request.email, request.password)
        record = await self._store.find_by_email(email)
        matched = await self._hasher.verify(request.password, record.password_hash if record else None)
        if record is None or not matched:
            raise domain.invalid_credentials()
        issued = self._issuer.issue(record.user_id, record.roles)
        return pb.LoginResponse(
            access_token=issued.token,
            token_type=TOKEN_TYPE,
            expire_time=timestamp(issued.expires_at),
            user_id=record.user_id,
        )

    async def GetUser(self, request: pb.GetUserRequest, context: Context) -> pb.GetUserResponse:
        principal = self._auth.required(context)
        domain.validate_user_id(request.user_id)
        domain.require_access(principal, request.user_id)
        return pb.GetUserResponse(user=user_pb(await self._store.get(request.user_id)))

    async def UpdateUser(self, request: pb.UpdateUserRequest, context: Context) -> pb.UpdateUserResponse:
        principal = self._auth.required(context)
        user_id = request.user.user_id
        display_name = domain.validate_update(
            user_id, list(request.update_mask.paths), request.user.display_name
        )
        domain.require_access(principal, user_id)
        record = await self._store.update_display_name(user_id, display_name)
        return pb.UpdateUserResponse(user=user_pb(record))

    async def ListUsers(self, request: pb.ListUsersRequest, context: Context) -> pb.ListUsersResponse:
        self._auth.admin(context)
        limit = page_size(request.page_size)
        records = await self._store.list(domain.decode_cursor(request.page_token), limit + 1)
        more = len(records) > limit
        records = records[:limit]
        token = domain.encode_cursor(records[-1].create_time, records[-1].user_id) if more else ""
        return pb.ListUsersResponse(users=[user_pb(r) for r in records], next_page_token=token)

    async def ListNotifications(
        self, request: pb.ListNotificationsRequest, context: Context
    ) -> pb.ListNotificationsResponse:
        # Own only, admins included: a notification is a message to one customer.
        principal = self._auth.required(context)
        limit = page_size(request.page_size)
        after = domain.decode_cursor(request.page_token)
        records = await self._notifications.list(principal.subject, after, limit + 1)
        more = len(records) > limit
        records = records[:limit]
        token = domain.encode_cursor(records[-1].create_time, records[-1].notification_id) if more else ""
        return pb.ListNotificationsResponse(
            notifications=[notification_pb(r) for r in records], next_page_token=token
        )
