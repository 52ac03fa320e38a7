"""The order service's calls to user, inventory, payment and shipping, behind one seam.

:class:`Upstreams` holds one stub per upstream over channels from a factory given the service
name: in the service, the process's mesh channels (Consul-discovered, balanced, with
failover), which its start-up code owns and closes. :meth:`Upstreams.for_call` binds them to
one incoming RPC: every outgoing call has a timeout that is the configured default but never
past the caller's remaining deadline. No call carries a token, the customer's or any other:
the order service calls as itself, proved by its mesh identity (its mTLS certificate, or the
``x-mesh-peer`` claim of :func:`mesh.connect.peer.peer_metadata` in plaintext debugging
mode), and participants accept order steps only from their trusted callers. So a saga resumed
after a restart, long after the customer's token expired, still runs.

gRPC errors are translated here, once: before anything is stored (user check, pricing) into
the statuses the caller should see; during the saga into :class:`StepFailure` kinds.

An account that the user service has confirmed once is remembered (:class:`KnownUsers`):
the user service has no way to remove or disable one, so the answer cannot change, and a
customer's later orders skip that call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2

from mesh.config import UpstreamSettings
from mesh.deadline import Deadline
from mesh.errors import DependencyUnavailable
from services.common.context import Context
from services.common.errors import DomainError, FailedPrecondition, PermissionDenied, Unauthenticated
from services.common.values import NANOS_PER_MINOR, money
from services.order.domain import DOMAIN, Order, Price
from services.order.participants import FailureKind, StepFailure
from shop.inventory.v1 import inventory_pb2 as inventory
from shop.inventory.v1.inventory_pb2_grpc import InventoryServiceStub
from shop.payment.v1 import payment_pb2 as payment
from shop.payment.v1.payment_pb2_grpc import PaymentServiceStub
from shop.shipping.v1 import shipping_pb2 as shipping
from shop.shipping.v1.shipping_pb2_grpc import ShippingServiceStub
from shop.user.v1 import user_pb2
from shop.user.v1.user_pb2_grpc import UserServiceStub

log = logging.getLogger(__name__)

T = TypeVar("T")
UPSTREAMS = ("user", "inventory", "payment", "shipping")
ChannelFactory = Callable[[str], grpc.aio.Channel]
Metadata = tuple[tuple[str, str], ...]

# Codes after which the participant certainly did nothing: it refused the request.
REFUSED = {
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
# Codes after which the call never ran: nobody was there to take it (or it was shed).
NOT_RUN = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED}


class CallerDeadlineExceeded(DomainError):
    """The caller's own deadline ran out before (or while) an upstream was asked.

    DEADLINE_EXCEEDED, never UNAVAILABLE: the deadline is the caller's choice, not an outage of
    the upstream, and UNAVAILABLE would count against the caller's breakers for this service
    (one customer with 5 ms deadlines could open them for everyone).
    """

    code = grpc.StatusCode.DEADLINE_EXCEEDED

    def __init__(self, service: str) -> None:
        super().__init__(f"the deadline ran out before {service} answered")
        self.service = service

    def details(self) -> list[Any]:
        return [
            error_details_pb2.ErrorInfo(
                reason="DEADLINE_EXCEEDED", domain=DOMAIN, metadata={"dependency": self.service}
            )
        ]


def step_failure(service: str, error: grpc.aio.AioRpcError) -> StepFailure:
    """The saga's view of a failed participant call; the reason names the service."""
    code, message = error.code(), error.details() or ""
    if code is grpc.StatusCode.FAILED_PRECONDITION:
        return StepFailure(FailureKind.BUSINESS, service, message or f"{service} refused the request")
    if code in REFUSED:
        return StepFailure(
            FailureKind.BUSINESS, service, f"{service} refused the request ({code.name}): {message}"
        )
    if code in NOT_RUN:
        return StepFailure(FailureKind.UNAVAILABLE, service, f"{service} is unavailable: {message}")
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return StepFailure(FailureKind.UNCERTAIN, service, f"{service} did not answer in time")
    return StepFailure(FailureKind.UNCERTAIN, service, f"{service} failed ({code.name}): {message}")


class KnownUsers:
    """Accounts the user service confirmed, remembered by this process; at most ``limit``.

    The user service creates accounts and never removes or disables them, so "this account
    exists" stays true once it was answered. Only confirmations are kept: an unknown user is
    asked again every time. Past ``limit`` the longest-known entry is forgotten, which costs
    one lookup when that customer orders again.
    """

    def __init__(self, limit: int = 65_536) -> None:
        self._limit = limit
        self._known: dict[str, None] = {}  # insertion order: the first key is the oldest

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._known

    def __len__(self) -> int:
        return len(self._known)

    def add(self, user_id: str) -> None:
        known = self._known
        if user_id not in known:
            if len(known) >= self._limit:
                del known[next(iter(known))]
            known[user_id] = None


class Upstreams:
    """One channel and stub per upstream service, shared by every call of this process."""

    def __init__(
        self, channels: Mapping[str, grpc.aio.Channel], default_timeout: float, metadata: Metadata
    ) -> None:
        self._channels = dict(channels)
        self._metadata = metadata  # what says "the order service" (nothing under mTLS)
        self.default_timeout = default_timeout
        self.known_users = KnownUsers()
        self.user = UserServiceStub(self._channels["user"])
        self.inventory = InventoryServiceStub(self._channels["inventory"])
        self.payment = PaymentServiceStub(self._channels["payment"])
        self.shipping = ShippingServiceStub(self._channels["shipping"])

    @classmethod
    def connect(cls, settings: UpstreamSettings, metadata: Metadata, factory: ChannelFactory) -> Upstreams:
        """Stubs over the channels ``factory`` gives (the process's mesh channels); every call
        carries ``metadata`` (``peer_metadata("order", insecure)``)."""
        return cls({name: factory(name) for name in UPSTREAMS}, settings.default_timeout_seconds, metadata)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    def for_call(self, context: Context) -> CallerClients:
        """Clients acting for the caller of ``context``, within its deadline."""
        remaining = context.time_remaining()
        deadline = None if remaining is None else Deadline.after(remaining)
        return CallerClients(self, self._metadata, deadline)

    def for_service(self) -> CallerClients:
        """Clients for the saga itself, bound to no caller's deadline.

        Sagas run in the background (and are resumed after a restart, when no caller exists),
        so each call is bounded by the default timeout only, and depends on no token's lifetime.
        """
        return CallerClients(self, self._metadata, None)


class CallerClients:
    """The upstream calls of one incoming RPC (or of the saga), within its deadline if any.

    Implements the saga's Participants and CreateOrder's Lookups.
    """

    def __init__(self, upstreams: Upstreams, metadata: Metadata, deadline: Deadline | None) -> None:
        self.upstreams = upstreams
        self.metadata = metadata
        self.deadline = deadline

    async def _call(self, service: str, method: Callable[..., Awaitable[T]], request: Any) -> T:
        """Send with the default timeout cut to the caller's deadline; no time left, no call
        (:class:`CallerDeadlineExceeded`)."""
        timeout = self.upstreams.default_timeout
        if self.deadline is not None:
            left = self.deadline.remaining()
            if left <= 0:
                raise CallerDeadlineExceeded(service)
            timeout = min(timeout, left)
        return await method(request, timeout=timeout, metadata=self.metadata)

    def _unavailable(self, service: str, error: grpc.aio.AioRpcError) -> DomainError | DependencyUnavailable:
        """A lookup's failure: the caller's deadline when that is what ran out, else an outage.

        An UNAVAILABLE counts as the caller's deadline too once that deadline has passed: the
        channel retries an unavailable endpoint elsewhere while time is left, so one that
        surfaces with none left (a connection still being made, no endpoint ready within the
        caller's 5 ms) is the caller's budget, not an outage to report, or to count in the
        gateway's breaker against everyone.
        """
        code = error.code()
        if (
            code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
            and self.deadline is not None
            and self.deadline.expired()
        ):
            return CallerDeadlineExceeded(service)
        return DependencyUnavailable(service, f"{code.name}: {error.details() or ''}")

    async def _step(self, service: str, method: Callable[..., Awaitable[T]], request: Any) -> T:
        try:
            return await self._call(service, method, request)
        except CallerDeadlineExceeded:
            # Nothing was sent: the step certainly did not run.
            raise StepFailure(
                FailureKind.UNAVAILABLE, service, f"no time was left to call {service}"
            ) from None
        except grpc.aio.AioRpcError as error:
            raise step_failure(service, error) from None

    # Lookups: before anything is stored.

    async def check_user(self, user_id: str) -> None:
        """FAILED_PRECONDITION for an unknown account; an account confirmed before is not asked
        about again (:class:`KnownUsers`)."""
        known = self.upstreams.known_users
        if user_id in known:
            return
        try:
            await self._call(
                "user service", self.upstreams.user.GetUser, user_pb2.GetUserRequest(user_id=user_id)
            )
            known.add(user_id)
        except grpc.aio.AioRpcError as error:
            code, message = error.code(), error.details() or ""
            if code is grpc.StatusCode.NOT_FOUND:
                raise FailedPrecondition(
                    "USER_NOT_FOUND", f"user '{user_id}' does not exist", DOMAIN, user_id=user_id
                ) from None
            if code is grpc.StatusCode.UNAUTHENTICATED:
                raise Unauthenticated(
                    f"user service did not recognise the order service: {message}"
                ) from None
            if code is grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied(f"user service refused: {message}") from None
            raise self._unavailable("user service", error) from None

    async def catalog(self, skus: Iterable[str]) -> dict[str, Price]:
        """Prices for the skus, asked concurrently; skus the catalog lacks are left out."""

        async def one(sku: str) -> tuple[str, Price | None]:
            stub = self.upstreams.inventory
            try:
                reply = await self._call(
                    "inventory service", stub.GetProduct, inventory.GetProductRequest(sku=sku)
                )
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.NOT_FOUND:
                    return sku, None
                raise self._unavailable("inventory service", error) from None
            price = reply.product.price
            return sku, Price(price.units * 100 + price.nanos // NANOS_PER_MINOR, price.currency_code)

        found = await asyncio.gather(*(one(sku) for sku in dict.fromkeys(skus)))
        return {sku: price for sku, price in found if price is not None}

    # Participants: the saga's steps and compensations, each keyed by the order's step keys.

    async def reserve_stock(self, order: Order) -> str:
        items = [inventory.StockItem(sku=i.sku, quantity=i.quantity) for i in order.items]
        request = inventory.ReserveStockRequest(
            reservation_id=order.keys.reservation_id,
            order_id=order.order_id,
            items=items,
            request_id=_request_id(order, "reserve_stock"),
        )
        await self._step("inventory service", self.upstreams.inventory.ReserveStock, request)
        return (
            f"{sum(i.quantity for i in order.items)} unit(s) held as reservation {order.keys.reservation_id}"
        )

    async def release_stock(self, order: Order) -> str:
        request = inventory.ReleaseStockRequest(
            reservation_id=order.keys.reservation_id, request_id=_request_id(order, "release_stock")
        )
        reply = await self._step("inventory service", self.upstreams.inventory.ReleaseStock, request)
        return "stock returned to the shelf" if reply.HasField("reservation") else "no stock was held"

    async def commit_stock(self, order: Order) -> str:
        request = inventory.CommitStockRequest(
            reservation_id=order.keys.reservation_id, request_id=_request_id(order, "commit_stock")
        )
        await self._step("inventory service", self.upstreams.inventory.CommitStock, request)
        return "reserved stock sold"

    async def authorize_payment(self, order: Order) -> str:
        request = payment.AuthorizePaymentRequest(
            payment_id=order.keys.payment_id,
            order_id=order.order_id,
            user_id=order.user_id,
            amount=money(order.total_minor, order.currency),
            request_id=_request_id(order, "authorize_payment"),
        )
        await self._step("payment service", self.upstreams.payment.AuthorizePayment, request)
        return f"{_amount(order)} authorized as payment {order.keys.payment_id}"

    async def capture_payment(self, order: Order) -> str:
        request = payment.CapturePaymentRequest(
            payment_id=order.keys.payment_id, request_id=_request_id(order, "capture_payment")
        )
        await self._step("payment service", self.upstreams.payment.CapturePayment, request)
        return f"{_amount(order)} captured"

    async def void_payment(self, order: Order) -> str:
        request = payment.VoidPaymentRequest(
            payment_id=order.keys.payment_id, request_id=_request_id(order, "void_payment")
        )
        reply = await self._step("payment service", self.upstreams.payment.VoidPayment, request)
        return "payment voided" if reply.HasField("payment") else "no payment was authorized"

    async def refund_payment(self, order: Order) -> str:
        request = payment.RefundPaymentRequest(
            payment_id=order.keys.payment_id, request_id=_request_id(order, "refund_payment")
        )
        await self._step("payment service", self.upstreams.payment.RefundPayment, request)
        return f"{_amount(order)} refunded"

    async def schedule_shipment(self, order: Order) -> str:
        a = order.address
        request = shipping.ScheduleShipmentRequest(
            shipment_id=order.keys.shipment_id,
            order_id=order.order_id,
            user_id=order.user_id,
            address=shipping.Address(
                recipient=a.recipient,
                line1=a.line1,
                city=a.city,
                postal_code=a.postal_code,
                country_code=a.country_code,
            ),
            request_id=_request_id(order, "schedule_shipment"),
        )
        reply = await self._step("shipping service", self.upstreams.shipping.ScheduleShipment, request)
        return (
            f"shipment {order.keys.shipment_id} scheduled, tracking {reply.shipment.tracking_number or '-'}"
        )

    async def cancel_shipment(self, order: Order) -> str:
        request = shipping.CancelShipmentRequest(
            shipment_id=order.keys.shipment_id, request_id=_request_id(order, "cancel_shipment")
        )
        reply = await self._step("shipping service", self.upstreams.shipping.CancelShipment, request)
        return "shipment cancelled" if reply.HasField("shipment") else "no shipment was scheduled"


def _request_id(order: Order, operation: str) -> str:
    """The same on every re-send of one operation, as the participants require."""
    return f"{order.order_id}.{operation}"


def _amount(order: Order) -> str:
    whole, cents = divmod(order.total_minor, 100)
    return f"{whole}.{cents:02d} {order.currency}"
