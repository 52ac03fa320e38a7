"""The durable saga under crashes, duplicates and contention, checked by the shop invariants.

Crash matrix: the order process is told (ORDER_FAULT_CRASH_AT) to os._exit(137) at one step
boundary: before or after each forward step's commit, or after an undo but before its
commit (compensation provoked by a refused destination, "AQ", or by cancelling a confirmed
order). It is then restarted without the fault; the restarted process must resume the saga
on its own (nobody re-sends anything), bring it to its terminal state within 30 s, and leave
every invariant holding: nothing double charged, nothing held for a cancelled order.

The matrix runs on SQLite and on PostgreSQL, each backend's shop on one xdist worker
(``-n 2 --dist loadgroup``), and with mTLS on as ``make run`` runs it: every process holds a
Connect certificate from a Consul agent of the shop's own, intentions allow only the shop's
calls, and the test calls as the ``cli`` identity (or, to replay the order service's calls,
as ``order``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from services.common.database import Database
from services.inventory.catalog import DEMO_CATALOG
from services.order.clients import CallerClients, Upstreams
from services.order.saga.definition import ORDER_STEPS
from services.order.store import OrderStore
from shop.inventory.v1 import inventory_pb2 as inv
from shop.inventory.v1.inventory_pb2_grpc import InventoryServiceStub
from shop.order.v1 import order_pb2 as pb
from shop.order.v1.order_pb2_grpc import OrderServiceStub
from shop.shipping.v1 import shipping_pb2 as ship
from tests.conftest import POSTGRES_ADMIN_DSN
from tests.support.invariants import rows, scalar, violations
from tests.support.saga_shop import SagaShop, order_for_request, saga_shop
from tests.support.tcp_proxy import TcpProxy
from tests.support.tokens import KeyPair
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

SQLITE = pytest.param("sqlite", marks=pytest.mark.xdist_group("saga-sqlite"))
POSTGRES = pytest.param("postgresql", marks=[pytest.mark.xdist_group("saga-postgres"), pytest.mark.postgres])
INITIAL_STOCK = {p.sku: p.stock for p in DEMO_CATALOG}
TOKYO = ship.Address(
    recipient="Ada", line1="1-1 Chiyoda", city="Tokyo", postal_code="100-0001", country_code="JP"
)
ANTARCTICA = ship.Address(
    recipient="Ada", line1="Base 1", city="McMurdo", postal_code="0000", country_code="AQ"
)
TERMINAL_WITHIN_SECONDS = 30

FORWARD = [f"{phase}:{s.name}" for s in ORDER_STEPS for phase in ("before_commit", "after_commit")]
REFUSED_SHIPMENT = ["compensating:undo_payment", "compensating:release_stock"]  # AQ undoes these
CUSTOMER_CANCEL = ["compensating:cancel_shipment"]  # only a confirmed order has a shipment to undo


@pytest.fixture(scope="session")
def saga_shops(jwt_keys: KeyPair) -> Iterator[tuple[dict[str, SagaShop], contextlib.ExitStack]]:
    """One shop per backend for the whole run, stopped in the session's teardown.

    Session-scoped (not module-scoped: an xdist worker that runs its first item before the
    next one arrives tears module fixtures down in between, starting the shop twice), and
    not a config cleanup either: that runs after the worker reported done, when it may be
    shut down before every process was stopped.
    """
    with contextlib.ExitStack() as stack:
        yield {}, stack


@pytest.fixture
def shop(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    jwt_keys: KeyPair,
    saga_shops: tuple[dict[str, SagaShop], contextlib.ExitStack],
) -> SagaShop:
    shops, stack = saga_shops
    backend = str(request.param)
    if backend not in shops:
        root = tmp_path_factory.mktemp(f"saga-{backend}")
        running = stack.enter_context(saga_shop(root, jwt_keys, backend, POSTGRES_ADMIN_DSN, mtls=True))
        running.start_order()
        shops[backend] = running
    return shops[backend]


@pytest.fixture
async def orders(shop: SagaShop) -> AsyncIterator[OrderServiceStub]:
    """A stub for whichever order process is current (re-resolved per call after restarts)."""

    class Current:
        def __getattr__(self, name: str) -> object:
            channel = shop.aio_channel("order")
            channels.append(channel)
            return getattr(OrderServiceStub(channel), name)

    channels: list[grpc.aio.Channel] = []
    yield Current()  # type: ignore[misc]
    for channel in channels:
        await channel.close()


def request(
    sku: str = "TEA-SENCHA", quantity: int = 1, address: ship.Address = TOKYO
) -> pb.CreateOrderRequest:
    return pb.CreateOrderRequest(
        items=[pb.OrderItem(sku=sku, quantity=quantity)],
        shipping_address=address,
        request_id=f"req-{uuid.uuid4().hex}",
    )


async def terminal(shop: SagaShop, orders: OrderServiceStub, order_id: str) -> pb.Order:
    """The order once its saga is closed (CONFIRMED, or CANCELLED with every undo done), polled
    within the bound; the saga's open flag is read from the order database because a CONFIRMED
    order being undone looks CONFIRMED from outside."""
    query = f"SELECT saga_open FROM orders WHERE order_id = '{order_id}'"
    async with asyncio.timeout(TERMINAL_WITHIN_SECONDS):
        while True:  # polled: the flag lives in another process's database
            if not await scalar(shop.databases, "order", query):
                break
            await asyncio.sleep(0.1)
    return (await orders.GetOrder(pb.GetOrderRequest(order_id=order_id), metadata=shop.customer)).order


async def crash(shop: SagaShop, call: object) -> None:
    """The call dies with the process; the process exits as if SIGKILLed."""
    with pytest.raises(grpc.aio.AioRpcError) as died:
        await call  # type: ignore[misc]
    assert died.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), died.value
    assert shop.order is not None and shop.order.process is not None
    assert await asyncio.to_thread(shop.order.process.wait, 10) == 137, shop.order.logs()[-2000:]


def outcome_counts(order: pb.Order) -> Counter[tuple[str, str]]:
    return Counter((s.name, s.outcome) for s in order.steps)


@pytest.mark.parametrize("shop", [SQLITE, POSTGRES], indirect=True)
@pytest.mark.parametrize("crash_at", FORWARD + REFUSED_SHIPMENT + CUSTOMER_CANCEL)
async def test_a_crash_at_any_boundary_is_resumed_to_a_terminal_state(
    shop: SagaShop, orders: OrderServiceStub, crash_at: str
) -> None:
    if crash_at in CUSTOMER_CANCEL:
        placed = (await orders.CreateOrder(request(), metadata=shop.customer, timeout=30)).order
        assert placed.status == pb.ORDER_STATUS_CONFIRMED, placed.status_reason
        shop.start_order(crash_at)
        order_id = placed.order_id
        await crash(
            shop,
            orders.CancelOrder(pb.CancelOrderRequest(order_id=order_id), metadata=shop.customer, timeout=30),
        )
        expected = pb.ORDER_STATUS_CANCELLED
    else:
        shop.start_order(crash_at)
        refused = crash_at in REFUSED_SHIPMENT
        sent = request(address=ANTARCTICA if refused else TOKYO)
        await crash(shop, orders.CreateOrder(sent, metadata=shop.customer, timeout=30))
        order_id = await order_for_request(shop.urls, sent.request_id)
        assert order_id, "the order was stored before the first step"
        expected = pb.ORDER_STATUS_CANCELLED if refused else pb.ORDER_STATUS_CONFIRMED

    shop.start_order()  # no fault; it must resume the saga by itself
    order = await terminal(shop, orders, order_id)

    assert order.status == expected, (order.status_reason, shop.order.logs()[-3000:] if shop.order else "")
    counts = outcome_counts(order)
    assert all(n == 1 for n in counts.values()), f"a step recorded twice: {counts}"
    assert await violations(shop.databases, INITIAL_STOCK) == []
    charged = f"SELECT COUNT(*) FROM payments WHERE order_id = '{order_id}'"
    assert await scalar(shop.databases, "payment", charged) == 1


@pytest.mark.parametrize("shop", [SQLITE], indirect=True)
async def test_resent_steps_and_orders_change_nothing(shop: SagaShop, orders: OrderServiceStub) -> None:
    from services.common.database import Database

    shop.start_order()
    clean = (await orders.CreateOrder(request(), metadata=shop.customer, timeout=30)).order
    refused_request = request(address=ANTARCTICA)
    refused = (await orders.CreateOrder(refused_request, metadata=shop.customer, timeout=30)).order
    assert (clean.status, refused.status) == (pb.ORDER_STATUS_CONFIRMED, pb.ORDER_STATUS_CANCELLED)
    # Invoices are issued by the billing consumer: wait (bounded poll) until it caught up.
    assert await violations(shop.databases, INITIAL_STOCK) == []
    before = await shop_state(shop)

    database = Database("order", shop.urls["order"], workers=1)
    # Replayed as the order service would send them: with its certificate.
    channels = {
        n: shop.aio_channel(n, identity="order") for n in ("user", "inventory", "payment", "shipping")
    }
    try:
        store = OrderStore(database)
        done, undone = await store.get(clean.order_id), await store.get(refused.order_id)
        as_order = shop.caller_metadata("order")  # nothing under mTLS: the certificate says it
        upstreams = Upstreams(channels, 5.0, as_order)
        calls = CallerClients(upstreams, as_order, None)
        for step in ORDER_STEPS:  # every forward step of the confirmed order, again
            await step.action(calls, done)
        await calls.reserve_stock(undone)  # the refused order's completed steps and undos, again
        await calls.authorize_payment(undone)
        await calls.void_payment(undone)
        await calls.release_stock(undone)
        await calls.cancel_shipment(undone)
    finally:
        for channel in channels.values():
            await channel.close()
        await database.close()
    again = (
        await orders.CreateOrder(
            pb.CreateOrderRequest(
                items=refused_request.items,
                shipping_address=ANTARCTICA,
                request_id=refused_request.request_id,
            ),
            metadata=shop.customer,
            timeout=30,
        )
    ).order

    assert again == refused
    assert await shop_state(shop) == before
    assert await violations(shop.databases, INITIAL_STOCK) == []


async def shop_state(shop: SagaShop) -> tuple[object, ...]:
    """Everything a duplicate could change, in a comparable form."""
    dbs = shop.databases
    queries = {
        "order": "SELECT order_id, version, status FROM orders ORDER BY order_id",
        "inventory": "SELECT sku, stock FROM products ORDER BY sku",
        "payment": "SELECT payment_id, state, amount_minor FROM payments ORDER BY payment_id",
        "shipping": "SELECT shipment_id, state FROM shipments ORDER BY shipment_id",
    }
    state = [await rows(getattr(dbs, n), n, sql) for n, sql in queries.items()]
    state.append(await rows(dbs.payment, "payment", "SELECT payment_id FROM invoices ORDER BY payment_id"))
    state.append(
        await rows(
            dbs.inventory,
            "inventory",
            "SELECT reservation_id, state FROM reservations ORDER BY reservation_id",
        )
    )
    return tuple(tuple(tuple(sorted(r.items())) for r in rows) for rows in state)


@pytest.mark.parametrize("shop", [POSTGRES], indirect=True)
async def test_two_hundred_orders_for_fifty_units_sell_exactly_fifty(
    shop: SagaShop, orders: OrderServiceStub
) -> None:
    sku, units, buyers = "WHISK-CHASEN", 50, 200
    shop.start_order()
    held = await scalar(shop.databases, "inventory", f"SELECT stock FROM products WHERE sku = '{sku}'")
    assert held == INITIAL_STOCK[sku]  # no other test of this shop sells whisks
    await set_stock(shop, sku, units)
    seen: list[int] = []
    stop = asyncio.Event()

    async def watch_stock() -> None:
        async with shop.aio_channel("inventory") as channel:
            stub = InventoryServiceStub(channel)
            while not stop.is_set():
                seen.append(int((await stub.GetProduct(inv.GetProductRequest(sku=sku))).product.stock))
                await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch_stock())
    async with shop.aio_channel("order") as channel:
        stub = OrderServiceStub(channel)
        placed = await asyncio.gather(
            *(stub.CreateOrder(request(sku), metadata=shop.customer, timeout=60) for _ in range(buyers))
        )
        final = [await terminal(shop, stub, p.order.order_id) for p in placed]
    stop.set()
    await watcher

    statuses = Counter(o.status for o in final)
    assert statuses == {pb.ORDER_STATUS_CONFIRMED: units, pb.ORDER_STATUS_CANCELLED: buyers - units}
    sold = f"SELECT stock FROM products WHERE sku = '{sku}'"
    assert await scalar(shop.databases, "inventory", sold) == 0
    assert seen and min(seen) >= 0
    assert await violations(shop.databases, {**INITIAL_STOCK, sku: units}) == []


async def set_stock(shop: SagaShop, sku: str, units: int) -> None:
    database = Database("inventory", shop.urls["inventory"], workers=1)
    try:
        await database.transact(
            lambda tx: tx.execute("UPDATE products SET stock = ? WHERE sku = ?", (units, sku))
        )
    finally:
        await database.close()


# A saga resumed before its participants can be reached.
IN_FLIGHT = ["before_commit:authorize_payment", "before_commit:schedule_shipment"]
UNREACHABLE_FOR_SECONDS = 2.5  # several of the resumed saga's retries (backoff capped at 0.5 s)
# The whisks' stock is reset by the 200-orders test, which may run before these on the shop.
OTHER_STOCK = {sku: units for sku, units in INITIAL_STOCK.items() if sku != "WHISK-CHASEN"}


async def saga_open(shop: SagaShop, order_id: str) -> bool:
    query = f"SELECT saga_open FROM orders WHERE order_id = '{order_id}'"
    return bool(await scalar(shop.databases, "order", query))


async def stays_pending(shop: SagaShop, orders: OrderServiceStub, order_id: str, seconds: float) -> pb.Order:
    """The order, polled for ``seconds``: it must stay PENDING (its saga waiting, not cancelled)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while True:
        order = (await orders.GetOrder(pb.GetOrderRequest(order_id=order_id), metadata=shop.customer)).order
        assert order.status == pb.ORDER_STATUS_PENDING and not order.status_reason.startswith("cancel"), (
            order.status,
            order.status_reason,
            [(s.name, s.outcome) for s in order.steps],
        )
        if loop.time() >= until:
            return order
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("shop", [SQLITE, POSTGRES], indirect=True)
@pytest.mark.parametrize("crash_at", IN_FLIGHT)
async def test_a_step_in_flight_at_a_crash_is_finished_once_discovery_finds_the_participants(
    shop: SagaShop, orders: OrderServiceStub, crash_at: str
) -> None:
    """The restarted order service cannot reach payment and shipping yet (discovery not ready:
    every connection is refused): the step that was in flight at the crash may have happened,
    so the saga waits for them and finishes it, instead of cancelling with that step left."""
    shop.start_order(crash_at)
    sent = request()
    await crash(shop, orders.CreateOrder(sent, metadata=shop.customer, timeout=30))
    order_id = await order_for_request(shop.urls, sent.request_id)
    assert order_id, "the order was stored before the first step"

    proxies = {n: TcpProxy("127.0.0.1", shop.processes[n].port) for n in ("payment", "shipping")}
    try:
        for proxy in proxies.values():
            await proxy.start()
            await proxy.sever()  # refuse every connection: nobody to call yet
        shop.start_order(upstreams={n: f"127.0.0.1:{p.port}" for n, p in proxies.items()})
        tried = lambda: sum(p.refused for p in proxies.values()) > 0  # noqa: E731
        await wait_until(tried, 15, "the resumed saga calling a participant")
        await stays_pending(shop, orders, order_id, UNREACHABLE_FOR_SECONDS)
        for proxy in proxies.values():
            proxy.heal()  # discovery found them
        order = await terminal(shop, orders, order_id)
    finally:
        for proxy in proxies.values():
            await proxy.stop()

    assert order.status == pb.ORDER_STATUS_CONFIRMED, (order.status_reason, outcome_counts(order))
    assert await violations(shop.databases, OTHER_STOCK) == []
    charged = f"SELECT COUNT(*) FROM payments WHERE order_id = '{order_id}'"
    assert await scalar(shop.databases, "payment", charged) == 1


@pytest.mark.parametrize("shop", [SQLITE, POSTGRES], indirect=True)
async def test_a_restart_of_the_whole_shop_leaves_every_saga_finished_and_the_shop_consistent(
    shop: SagaShop, orders: OrderServiceStub
) -> None:
    """Orders under way when the order service crashes and every participant is killed with it
    (a host going down); the order service comes back first, the participants a little later.
    Every order must end terminal and the invariant checker must find nothing."""
    shop.start_order("before_commit:schedule_shipment")
    sent = [request() for _ in range(6)]
    async with shop.aio_channel("order") as channel:
        stub = OrderServiceStub(channel)
        placed = await asyncio.gather(
            *(stub.CreateOrder(r, metadata=shop.customer, timeout=30) for r in sent), return_exceptions=True
        )
    assert any(isinstance(p, grpc.aio.AioRpcError) for p in placed), placed  # they died with it
    assert shop.order is not None and shop.order.process is not None
    assert await asyncio.to_thread(shop.order.process.wait, 10) == 137, shop.order.logs()[-2000:]
    shop.kill_participants()
    ids = [i for i in [await order_for_request(shop.urls, r.request_id) for r in sent] if i]
    assert ids, "some orders were stored before the crash"

    shop.start_order()  # first back: its resumed sagas find nobody to call
    open_before = [i for i in ids if await saga_open(shop, i)]
    await asyncio.sleep(UNREACHABLE_FOR_SECONDS)
    for order_id in open_before:
        assert await saga_open(shop, order_id), f"{order_id} ended while no participant was up"
    await asyncio.to_thread(shop.restart_participants)

    final = [await terminal(shop, orders, order_id) for order_id in ids]
    assert all(o.status == pb.ORDER_STATUS_CONFIRMED for o in final), [
        (o.order_id, o.status, o.status_reason) for o in final
    ]
    assert await violations(shop.databases, OTHER_STOCK) == []
