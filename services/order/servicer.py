"""OrderService over gRPC: proto in, use case, proto out; nothing more."""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.common import limits
from services.common.auth import Authenticator
from services.common.context import Context
from services.common.idempotency import RequestKey
from services.common.pagination import page, page_request, parse_time_id, time_id_position
from services.order import domain
from services.order.clients import Upstreams
from services.order.convert import order_pb
from services.order.domain import Address, Line
from services.order.orders import Orders
from shop.order.v1 import order_pb2 as pb
from shop.order.v1 import order_pb2_grpc

# Kept back from the caller's deadline so the PENDING answer still reaches it in time.
ANSWER_MARGIN_SECONDS = 0.25


def wait_budget(context: Context) -> float | None:
    """How long a call may wait for its saga: the caller's deadline less a margin (None: no
    deadline, wait until terminal)."""
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, remaining - ANSWER_MARGIN_SECONDS)


def address(request: pb.CreateOrderRequest) -> Address | None:
    if not request.HasField("shipping_address"):
        return None
    a = request.shipping_address
    return Address(a.recipient, a.line1, a.city, a.postal_code, a.country_code)


def require_order_id(order_id: str) -> None:
    limits.require_id("order_id", order_id)


class OrderServicer(order_pb2_grpc.OrderServiceServicer):  # type: ignore[misc]  # generated grpc code is untyped (Any) for mypy
    """CreateOrder and CancelOrder answer with the terminal order, or PENDING (CONFIRMED for a
    cancellation under way) when the caller's deadline comes first; the saga runs on as the
    order service, and WatchOrder is how a caller follows it to the end."""

    def __init__(self, orders: Orders, upstreams: Upstreams, auth: Authenticator) -> None:
        self._orders = orders
        self._upstreams = upstreams
        self._auth = auth

    async def CreateOrder(self, request: pb.CreateOrderRequest, context: Context) -> pb.CreateOrderResponse:
        principal = self._auth.required(context)
        lines = [Line(item.sku, item.quantity) for item in request.items]
        draft = domain.validate_create(lines, address(request), request.request_id)
        lookups, saga = self._upstreams.for_call(context), self._upstreams.for_service()
        order = await self._orders.create(principal.subject, draft, lookups, saga, wait_budget(context))
        return pb.CreateOrderResponse(order=order_pb(order))

    async def GetOrder(self, request: pb.GetOrderRequest, context: Context) -> pb.GetOrderResponse:
        principal = self._auth.required(context)
        require_order_id(request.order_id)
        return pb.GetOrderResponse(order=order_pb(await self._orders.get(principal, request.order_id)))

    async def ListOrders(self, request: pb.ListOrdersRequest, context: Context) -> pb.ListOrdersResponse:
        principal = self._auth.required(context)
        wanted = page_request(request.page_size, request.page_token)
        rows = await self._orders.list(principal.subject, parse_time_id(wanted.after), wanted.fetch)
        orders, token = page(rows, wanted, lambda o: time_id_position(o.create_time, o.order_id))
        return pb.ListOrdersResponse(orders=[order_pb(o) for o in orders], next_page_token=token)

    async def WatchOrder(
        self, request: pb.WatchOrderRequest, context: Context
    ) -> AsyncIterator[pb.WatchOrderResponse]:
        principal = self._auth.required(context)
        require_order_id(request.order_id)
        async for order in self._orders.watch(principal, request.order_id):
            yield pb.WatchOrderResponse(order=order_pb(order))

    async def CancelOrder(self, request: pb.CancelOrderRequest, context: Context) -> pb.CancelOrderResponse:
        principal = self._auth.required(context)
        require_order_id(request.order_id)
        limits.require_request_id(request.request_id)
        key = RequestKey.of("CancelOrder", principal.subject, request.request_id, request.order_id)
        order = await self._orders.cancel(
            principal, request.order_id, self._upstreams.for_service(), wait_budget(context), key
        )
        return pb.CancelOrderResponse(order=order_pb(order))
