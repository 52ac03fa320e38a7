"""UserService over gRPC: proto in, domain and store, proto out; nothing more."""

from __future__ import annotations

from services.common.auth import Authenticator
from services.common.context import Context
from services.common.idempotency import KeyReused, RequestKey
from services.common.pagination import page, page_request, parse_time_id, time_id_position
from services.common.values import timestamp
from services.user import domain
from services.user.domain import Role
from services.user.hashing import PasswordHasher
from services.user.notifications import NotificationKind, NotificationRecord, NotificationStore
from services.user.store import DOMAIN, NewUser, UserRecord, UserStore
from services.user.throttle import LoginThrottle
from services.user.tokens import TokenIssuer
from shop.user.v1 import user_pb2 as pb
from shop.user.v1 import user_pb2_grpc

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


class UserServicer(user_pb2_grpc.UserServiceServicer):  # type: ignore[misc]  # generated grpc code is untyped (Any) for mypy
    def __init__(
        self,
        store: UserStore,
        auth: Authenticator,
        hasher: PasswordHasher,
        issuer: TokenIssuer,
        notifications: NotificationStore,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self._store = store
        self._throttle = throttle or LoginThrottle()
        self._notifications = notifications
        self._auth = auth
        self._hasher = hasher
        self._issuer = issuer

    async def CreateUser(self, request: pb.CreateUserRequest, context: Context) -> pb.CreateUserResponse:
        """Register without disclosing accounts (README, "Registration"): a taken email is
        answered like a registration (a decoy id, nothing about the existing account); a
        request_id re-sent with the same email, name and password gets the same answer, and
        reused with any other is refused (IDEMPOTENCY_KEY_REUSED) without the account."""
        registration = domain.validate_registration(
            request.email, request.password, request.display_name, request.request_id
        )
        key = registration.request_id
        first = await self._store.find_signup(key) if key else None
        if first is None:
            password_hash = await self._hasher.hash(request.password)
            record = await self._store.create(
                NewUser(
                    registration.email,
                    registration.display_name,
                    password_hash,
                    domain.CUSTOMER_ROLES,
                    key,
                )
            )
            if record is not None:
                return pb.CreateUserResponse(user=user_pb(record))
            first = await self._store.find_signup(key)  # a concurrent twin took the key first
            assert first is not None
        same = (first.email, first.display_name) == (registration.email, registration.display_name)
        matched = await self._hasher.verify(request.password, first.password_hash)
        if not (same and matched):
            raise KeyReused("request_id", key, DOMAIN)
        return pb.CreateUserResponse(user=user_pb(await self._store.answer(first)))

    async def Login(self, request: pb.LoginRequest, context: Context) -> pb.LoginResponse:
        email = domain.validate_login(request.email, request.password)
        # Throttled per source and per account before any work, and again once this
        # source's turn at the hashing pool comes (failures may have landed meanwhile).
        source = self._auth.source(context)
        self._throttle.admit(source, email)
        record = await self._store.find_by_email(email)
        async with self._throttle.hashing_turn(source):
            self._throttle.admit(source, email)
            matched = await self._hasher.verify(request.password, record.password_hash if record else None)
        if record is None or not matched:
            self._throttle.failed(source, email)
            raise domain.invalid_credentials()
        self._throttle.succeeded(email)
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
            user_id, list(request.update_mask.paths), request.user.display_name, request.request_id
        )
        domain.require_access(principal, user_id)
        key = RequestKey.of("UpdateUser", principal.subject, request.request_id, user_id, display_name)
        record = await self._store.update_display_name(user_id, display_name, key)
        return pb.UpdateUserResponse(user=user_pb(record))

    async def ListUsers(self, request: pb.ListUsersRequest, context: Context) -> pb.ListUsersResponse:
        self._auth.admin(context)
        wanted = page_request(request.page_size, request.page_token)
        rows = await self._store.list(parse_time_id(wanted.after), wanted.fetch)
        records, token = page(rows, wanted, lambda r: time_id_position(r.create_time, r.user_id))
        return pb.ListUsersResponse(users=[user_pb(r) for r in records], next_page_token=token)

    async def ListNotifications(
        self, request: pb.ListNotificationsRequest, context: Context
    ) -> pb.ListNotificationsResponse:
        # Own only, admins included: a notification is a message to one customer.
        principal = self._auth.required(context)
        wanted = page_request(request.page_size, request.page_token)
        rows = await self._notifications.list(principal.subject, parse_time_id(wanted.after), wanted.fetch)
        records, token = page(rows, wanted, lambda r: time_id_position(r.create_time, r.notification_id))
        return pb.ListNotificationsResponse(
            notifications=[notification_pb(r) for r in records], next_page_token=token
        )
