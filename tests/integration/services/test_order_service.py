"""The order service end to end: all five services as real processes, called through the stubs.

The shop is started once for the module (processes start in parallel and are polled until
SERVING); tests share it, so each one uses its own request ids and measures stock as deltas.
The payment process declines anything above 500.00, so a decline is a large enough order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shop.inventory.v1 import inventory_pb2 as inv
from shop.inventory.v1.inventory_pb2_grpc import InventoryServiceStub
from shop.order.v1 import order_pb2 as pb
from shop.order.v1.order_pb2_grpc import OrderServiceStub
from shop.payment.v1 import payment_pb2 as pay
from shop.payment.v1.payment_pb2_grpc import PaymentServiceStub
from shop.shipping.v1 import shipping_pb2 as ship
from shop.shipping.v1.shipping_pb2_grpc import ShippingServiceStub
from shop.user.v1 import user_pb2
from shop.user.v1.user_pb2_grpc import UserServiceStub
from tests.support.bus import new_bus
from tests.support.processes import ServiceProcess, free_port, service_env, stop_all
from tests.support.tokens import KeyPair

# One shop per module: under xdist's loadgroup every test of this file runs on one worker.
pytestmark = pytest.mark.xdist_group("order-service-e2e")

Metadata = tuple[tuple[str, str], ...]
DECLINE_ABOVE_MINOR = 50_000
TOKYO = ship.Address(
    recipient="Ada", line1="1-1 Chiyoda", city="Tokyo", postal_code="100-0001", country_code="JP"
)


@dataclass
class Shop:
    processes: dict[str, ServiceProcess]
    start: Callable[..., ServiceProcess]
    ada: Metadata
    bob: Metadata
    service: Metadata  # what the order service itself presents; reservations are its business

    def address(self, name: str) -> str:
        return self.processes[name].address

    def upstreams(self, **override: str) -> dict[str, str]:
        """MESH_UPSTREAM_* for an order process: this shop's services unless overridden."""
        names = ("user", "inventory", "payment", "shipping")
        return {f"MESH_UPSTREAM_{n.upper()}": override.get(n, self.address(n)) for n in names}


def login(address: str, email: str) -> Metadata:
    """A real token: register on the user service, then log in."""
    with grpc.insecure_channel(address) as channel:
        users = UserServiceStub(channel)
        users.CreateUser(
            user_pb2.CreateUserRequest(email=email, password="correct horse 9", display_name=email)
        )
        reply = users.Login(user_pb2.LoginRequest(email=email, password="correct horse 9"))
    return (("authorization", f"Bearer {reply.access_token}"),)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, jwt_keys: KeyPair) -> Iterator[Shop]:
    root = tmp_path_factory.mktemp("shop")
    started: list[ServiceProcess] = []
    bus = new_bus()  # the bus on (own namespace): payment's billing issues the invoices

    def start(name: str, **env: str) -> ServiceProcess:
        port = free_port()
        base = {
            "MESH_PORT": str(port),
            "MESH_DATA_DIR": str(root / f"data-{port}"),
            **jwt_keys.env(name),
            **bus.env(),
        }
        process = ServiceProcess(name, port, service_env(base, **env), root / f"{name}-{port}.log")
        started.append(process)
        return process.start()

    try:
        settings = {
            "user": {},
            "inventory": {"INVENTORY_SEED_DEMO": "1"},
            "payment": {"PAYMENT_DECLINE_ABOVE_MINOR": str(DECLINE_ABOVE_MINOR)},
            "shipping": {},
        }
        with ThreadPoolExecutor(len(settings)) as pool:
            futures = {name: pool.submit(start, name, **env) for name, env in settings.items()}
            processes = {name: future.result() for name, future in futures.items()}
        bus.wait_consumer("billing")
        partial = Shop(processes, start, (), (), ())
        processes["order"] = start("order", **partial.upstreams())
        yield Shop(
            processes,
            start,
            login(partial.address("user"), "ada@example.com"),
            login(partial.address("user"), "bob@example.com"),
            jwt_keys.service_metadata("order"),
        )
    finally:
        stop_all(reversed(started))
        bus.delete()


@dataclass
class Stubs:
    orders: OrderServiceStub
    inventory: InventoryServiceStub
    payment: PaymentServiceStub
    shipping: ShippingServiceStub

    async def stock(self, sku: str) -> int:
        return int((await self.inventory.GetProduct(inv.GetProductRequest(sku=sku))).product.stock)


@pytest.fixture
async def stubs(shop: Shop) -> AsyncIterator[Stubs]:
    names = ("order", "inventory", "payment", "shipping")
    channels = [grpc.aio.insecure_channel(shop.address(n)) for n in names]
    try:
        yield Stubs(
            OrderServiceStub(channels[0]),
            InventoryServiceStub(channels[1]),
            PaymentServiceStub(channels[2]),
            ShippingServiceStub(channels[3]),
        )
    finally:
        for channel in channels:
            await channel.close()


def order_request(
    *items: tuple[str, int], address: ship.Address = TOKYO, request_id: str = ""
) -> pb.CreateOrderRequest:
    return pb.CreateOrderRequest(
        items=[pb.OrderItem(sku=sku, quantity=qty) for sku, qty in items],
        shipping_address=address,
        request_id=request_id or f"req-{uuid.uuid4().hex}",
    )


async def place(stubs: Stubs, who: Metadata, request: pb.CreateOrderRequest) -> pb.Order:
    return (await stubs.orders.CreateOrder(request, metadata=who, timeout=30)).order


def outcomes(order: pb.Order) -> list[tuple[str, str]]:
    return [(s.name, s.outcome) for s in order.steps]


async def reservation_state(stubs: Stubs, who: Metadata, reservation_id: str) -> int | None:
    try:
        reply = await stubs.inventory.GetReservation(
            inv.GetReservationRequest(reservation_id=reservation_id), metadata=who
        )
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        return None
    return int(reply.reservation.state)


async def payment_state(stubs: Stubs, who: Metadata, payment_id: str) -> int | None:
    try:
        reply = await stubs.payment.GetPayment(pay.GetPaymentRequest(payment_id=payment_id), metadata=who)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        return None
    return int(reply.payment.state)


async def test_happy_path_confirms_holds_nothing_back(shop: Shop, stubs: Stubs) -> None:
    before = await stubs.stock("TEA-SENCHA")
    order = await place(stubs, shop.ada, order_request(("TEA-SENCHA", 2), ("CUP-YUNOMI", 1)))
    assert order.status == pb.ORDER_STATUS_CONFIRMED, order.status_reason
    assert [(i.sku, i.quantity, i.unit_price.units) for i in order.items] == [
        ("TEA-SENCHA", 2, 12),
        ("CUP-YUNOMI", 1, 18),
    ]
    assert (order.total.currency_code, order.total.units, order.total.nanos) == ("EUR", 43, 0)
    assert outcomes(order) == [
        (name, "completed")
        for name in (
            "reserve_stock",
            "authorize_payment",
            "schedule_shipment",
            "capture_payment",
            "commit_stock",
        )
    ]
    assert await stubs.stock("TEA-SENCHA") == before - 2
    assert (
        await reservation_state(stubs, shop.service, order.reservation_id) == inv.RESERVATION_STATE_COMMITTED
    )
    payment = (
        await stubs.payment.GetPayment(pay.GetPaymentRequest(payment_id=order.payment_id), metadata=shop.ada)
    ).payment
    assert payment.state == pay.PAYMENT_STATE_CAPTURED and payment.amount.units == 43
    async with asyncio.timeout(30):  # billing issues the invoice from order.confirmed: polled
        while True:
            invoices = (
                await stubs.payment.ListInvoices(pay.ListInvoicesRequest(page_size=100), metadata=shop.ada)
            ).invoices
            if any(i.payment_id == order.payment_id for i in invoices):
                break
            await asyncio.sleep(0.05)
    assert [i.order_id for i in invoices if i.payment_id == order.payment_id] == [order.order_id]
    shipment = (
        await stubs.shipping.GetShipment(
            ship.GetShipmentRequest(shipment_id=order.shipment_id), metadata=shop.ada
        )
    ).shipment
    assert shipment.state == ship.SHIPMENT_STATE_SCHEDULED and shipment.address.country_code == "JP"
    fetched = (
        await stubs.orders.GetOrder(pb.GetOrderRequest(order_id=order.order_id), metadata=shop.ada)
    ).order
    assert fetched == order


async def test_out_of_stock_cancels_and_holds_no_stock(shop: Shop, stubs: Stubs) -> None:
    before = await stubs.stock("WHISK-CHASEN")
    order = await place(stubs, shop.ada, order_request(("TEA-MATCHA", 1), ("WHISK-CHASEN", before + 1)))
    assert order.status == pb.ORDER_STATUS_CANCELLED
    assert "insufficient stock for 'WHISK-CHASEN'" in order.status_reason
    assert outcomes(order) == [("reserve_stock", "failed")]
    assert await stubs.stock("WHISK-CHASEN") == before
    assert await reservation_state(stubs, shop.service, f"{order.order_id}.reserve") is None
    assert order.payment_id == "" and await payment_state(stubs, shop.ada, f"{order.order_id}.pay") is None


async def test_declined_payment_cancels_and_releases_the_stock(shop: Shop, stubs: Stubs) -> None:
    before = await stubs.stock("CUP-KYUSU")
    order = await place(stubs, shop.ada, order_request(("CUP-KYUSU", 8)))  # 544.00 > 500.00
    assert order.status == pb.ORDER_STATUS_CANCELLED
    assert "payment declined" in order.status_reason
    assert outcomes(order) == [
        ("reserve_stock", "completed"),
        ("authorize_payment", "failed"),
        ("reserve_stock", "compensated"),
    ]
    assert await stubs.stock("CUP-KYUSU") == before
    assert (
        await reservation_state(stubs, shop.service, order.reservation_id) == inv.RESERVATION_STATE_RELEASED
    )
    assert await payment_state(stubs, shop.ada, f"{order.order_id}.pay") is None  # never authorized


async def test_refused_destination_cancels_voids_and_releases(shop: Shop, stubs: Stubs) -> None:
    before = await stubs.stock("TEA-SENCHA")
    antarctica = ship.Address(
        recipient="Ada", line1="Base 1", city="McMurdo", postal_code="0000", country_code="AQ"
    )
    order = await place(stubs, shop.ada, order_request(("TEA-SENCHA", 1), address=antarctica))
    assert order.status == pb.ORDER_STATUS_CANCELLED
    assert "'AQ' is not supported" in order.status_reason
    assert outcomes(order)[-3:] == [
        ("schedule_shipment", "failed"),
        ("authorize_payment", "compensated"),
        ("reserve_stock", "compensated"),
    ]
    assert await stubs.stock("TEA-SENCHA") == before
    assert await payment_state(stubs, shop.ada, order.payment_id) == pay.PAYMENT_STATE_VOIDED
    assert (
        await reservation_state(stubs, shop.service, order.reservation_id) == inv.RESERVATION_STATE_RELEASED
    )


async def test_resending_create_order_returns_the_same_order_once(shop: Shop, stubs: Stubs) -> None:
    before = await stubs.stock("TEA-MATCHA")
    request = order_request(("TEA-MATCHA", 3), request_id="resend-1")
    first = await place(stubs, shop.ada, request)
    second = await place(stubs, shop.ada, request)
    assert first.status == pb.ORDER_STATUS_CONFIRMED and second == first
    assert await stubs.stock("TEA-MATCHA") == before - 3
    bobs = await place(stubs, shop.bob, request)  # the key is per user
    assert bobs.order_id != first.order_id and await stubs.stock("TEA-MATCHA") == before - 6


def key_reused(error: grpc.aio.AioRpcError, request_id: str) -> bool:
    """ALREADY_EXISTS with ErrorInfo IDEMPOTENCY_KEY_REUSED naming ``request_id``."""
    status = rpc_status.from_call(error)
    info = error_details_pb2.ErrorInfo()
    return (
        error.code() == grpc.StatusCode.ALREADY_EXISTS
        and status is not None
        and len(status.details) == 1
        and status.details[0].Unpack(info)
        and (info.reason, dict(info.metadata)) == ("IDEMPOTENCY_KEY_REUSED", {"request_id": request_id})
    )


async def test_reusing_a_request_id_with_another_order_is_refused(shop: Shop, stubs: Stubs) -> None:
    key = f"reuse-{uuid.uuid4().hex}"
    first = await place(stubs, shop.ada, order_request(("TEA-MATCHA", 1), request_id=key))
    elsewhere = ship.Address(
        recipient="Mallory", line1="9-9 Kita", city="Osaka", postal_code="530-0001", country_code="JP"
    )
    for different in (
        order_request(("TEA-SENCHA", 2), request_id=key),
        order_request(("TEA-MATCHA", 2), request_id=key),
        order_request(("TEA-MATCHA", 1), address=elsewhere, request_id=key),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await place(stubs, shop.ada, different)
        assert key_reused(reused.value, key), reused.value
    # The same body under the same key is a re-send: the same order, and only one.
    same = order_request(("TEA-MATCHA", 1), request_id=key)
    assert await place(stubs, shop.ada, same) == first
    listed = (await stubs.orders.ListOrders(pb.ListOrdersRequest(page_size=100), metadata=shop.ada)).orders
    assert not [o.order_id for o in listed if o.shipping_address.recipient == "Mallory"]


async def test_reusing_a_cancel_request_id_for_another_order_is_refused(shop: Shop, stubs: Stubs) -> None:
    key = f"cancel-{uuid.uuid4().hex}"
    one, two = [await place(stubs, shop.ada, order_request(("CUP-YUNOMI", 1))) for _ in range(2)]
    cancel = pb.CancelOrderRequest(order_id=one.order_id, request_id=key)
    cancelled = (await stubs.orders.CancelOrder(cancel, metadata=shop.ada)).order
    assert cancelled.status == pb.ORDER_STATUS_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await stubs.orders.CancelOrder(
            pb.CancelOrderRequest(order_id=two.order_id, request_id=key), metadata=shop.ada
        )
    assert key_reused(reused.value, key), reused.value
    untouched = await stubs.orders.GetOrder(pb.GetOrderRequest(order_id=two.order_id), metadata=shop.ada)
    assert untouched.order.status == pb.ORDER_STATUS_CONFIRMED
    assert (await stubs.orders.CancelOrder(cancel, metadata=shop.ada)).order == cancelled


async def test_orders_are_private_and_lists_are_per_caller(shop: Shop, stubs: Stubs) -> None:
    mine = [await place(stubs, shop.ada, order_request(("CUP-YUNOMI", 1))) for _ in range(3)]
    theirs = await place(stubs, shop.bob, order_request(("CUP-YUNOMI", 1)))
    for call in (
        stubs.orders.GetOrder(pb.GetOrderRequest(order_id=mine[0].order_id), metadata=shop.bob),
        stubs.orders.CancelOrder(pb.CancelOrderRequest(order_id=mine[0].order_id), metadata=shop.bob),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await call
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND

    listed, token = [], ""
    while True:
        page = await stubs.orders.ListOrders(
            pb.ListOrdersRequest(page_size=2, page_token=token), metadata=shop.ada
        )
        listed += [o.order_id for o in page.orders]
        token = page.next_page_token
        if not token:
            break
    assert listed[:3] == [o.order_id for o in reversed(mine)]  # newest first
    assert theirs.order_id not in listed and len(listed) == len(set(listed))
    bobs = (await stubs.orders.ListOrders(pb.ListOrdersRequest(), metadata=shop.bob)).orders
    assert all(o.user_id == theirs.user_id for o in bobs) and theirs.order_id in {o.order_id for o in bobs}


async def test_cancelling_a_confirmed_order_refunds_and_returns_stock(shop: Shop, stubs: Stubs) -> None:
    before = await stubs.stock("CUP-KYUSU")
    order = await place(stubs, shop.ada, order_request(("CUP-KYUSU", 2)))
    assert order.status == pb.ORDER_STATUS_CONFIRMED and await stubs.stock("CUP-KYUSU") == before - 2
    request = pb.CancelOrderRequest(order_id=order.order_id, request_id="cancel-1")
    cancelled = (await stubs.orders.CancelOrder(request, metadata=shop.ada)).order
    assert (cancelled.status, cancelled.status_reason) == (pb.ORDER_STATUS_CANCELLED, "cancelled by customer")
    assert outcomes(cancelled)[5:] == [
        ("schedule_shipment", "compensated"),
        ("authorize_payment", "compensated"),
        ("reserve_stock", "compensated"),
    ]
    assert await stubs.stock("CUP-KYUSU") == before
    assert await payment_state(stubs, shop.ada, order.payment_id) == pay.PAYMENT_STATE_REFUNDED
    shipment = await stubs.shipping.GetShipment(
        ship.GetShipmentRequest(shipment_id=order.shipment_id), metadata=shop.ada
    )
    assert shipment.shipment.state == ship.SHIPMENT_STATE_CANCELLED
    again = (await stubs.orders.CancelOrder(request, metadata=shop.ada)).order
    assert again == cancelled


async def test_watching_a_finished_order_yields_it_once_and_ends(shop: Shop, stubs: Stubs) -> None:
    order = await place(stubs, shop.ada, order_request(("TEA-SENCHA", 1)))
    stream = stubs.orders.WatchOrder(
        pb.WatchOrderRequest(order_id=order.order_id), metadata=shop.ada, timeout=10
    )
    assert [reply.order async for reply in stream] == [order]
    hidden = stubs.orders.WatchOrder(
        pb.WatchOrderRequest(order_id=order.order_id), metadata=shop.bob, timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await hidden.read()
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def field_violations(error: grpc.aio.AioRpcError) -> set[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return {v.field for v in bad_request.field_violations}


async def test_invalid_requests_get_field_violations(shop: Shop, stubs: Stubs) -> None:
    bad = [
        (pb.CreateOrderRequest(), {"items", "shipping_address", "request_id"}),
        (order_request(("TEA-SENCHA", 0), ("", 1)), {"items[0].quantity", "items[1].sku"}),
        (
            order_request(("TEA-SENCHA", 1), address=ship.Address(country_code="jp")),
            {f"shipping_address.{f}" for f in ("recipient", "line1", "city", "postal_code", "country_code")},
        ),
        (order_request(("NO-SUCH-SKU", 1)), {"items[0].sku"}),
    ]
    for request, fields in bad:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stubs.orders.CreateOrder(request, metadata=shop.ada)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error.value) == fields
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await stubs.orders.CreateOrder(order_request(("TEA-SENCHA", 1)))
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stubs.orders.GetOrder(pb.GetOrderRequest(order_id="ord_nope"), metadata=shop.ada)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_stopped_dependencies_are_named_never_internal(shop: Shop, stubs: Stubs) -> None:
    doomed_payment = shop.start("payment")
    with ThreadPoolExecutor(2) as pool:
        starting = [
            # Waits 0.5 s for payment (not 60 s) before it starts cancelling.
            pool.submit(
                shop.start,
                "order",
                ORDER_SAGA_UNAVAILABLE_WAIT_SECONDS="0.5",
                **shop.upstreams(payment=doomed_payment.address),
            ),
            pool.submit(shop.start, "order", **shop.upstreams(user=f"127.0.0.1:{free_port()}")),
        ]
        no_payment, no_user = (future.result() for future in starting)
    doomed_payment.terminate()
    before = await stubs.stock("TEA-SENCHA")

    async with grpc.aio.insecure_channel(no_payment.address) as channel:
        try:
            order = (
                await OrderServiceStub(channel).CreateOrder(
                    order_request(("TEA-SENCHA", 1)), metadata=shop.ada, timeout=5
                )
            ).order
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE and "payment" in (error.details() or "")
        else:
            # The authorization may have happened (a crash could have cut its answer off), so it
            # is undone too: the stock is released at once, the order stays PENDING, saying
            # payment is unavailable, until payment can be asked to void it.
            assert order.status == pb.ORDER_STATUS_PENDING and "payment service" in order.status_reason
            assert outcomes(order)[:2] == [("reserve_stock", "completed"), ("authorize_payment", "failed")]
            assert ("reserve_stock", "compensated") in outcomes(order)
    assert await stubs.stock("TEA-SENCHA") == before

    async with grpc.aio.insecure_channel(no_user.address) as channel:
        orders = OrderServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await orders.CreateOrder(order_request(("TEA-SENCHA", 1)), metadata=shop.ada, timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "user service" in (refused.value.details() or "")
        assert list((await orders.ListOrders(pb.ListOrdersRequest(), metadata=shop.ada)).orders) == []
    assert await stubs.stock("TEA-SENCHA") == before
