"""A frozen participant instance costs a saga step one short attempt, not the order.

Real processes: user, inventory, shipping, two payment instances over one payment database,
and the order service with both payment instances as its static ``payment`` targets and no
policy file (its built-in participant policy only). One payment instance is frozen with
SIGSTOP, then orders are placed concurrently: each must end CONFIRMED, its payment steps
retried on the other instance after a timed-out attempt. The frozen process is resumed only
after every order has returned (and in a ``finally``), so they provably finished while it was
frozen.
"""

from __future__ import annotations

import signal
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc

from shop.order.v1 import order_pb2 as pb
from shop.order.v1.order_pb2_grpc import OrderServiceStub
from shop.shipping.v1 import shipping_pb2 as ship
from shop.user.v1 import user_pb2
from shop.user.v1.user_pb2_grpc import UserServiceStub
from tests.conftest import StartService
from tests.support.freeze import freeze

ORDERS = 6  # concurrent orders while one payment instance is frozen: some are sent to it
Metadata = tuple[tuple[str, str], ...]
TOKYO = ship.Address(
    recipient="Ada", line1="1-1 Chiyoda", city="Tokyo", postal_code="100-0001", country_code="JP"
)


def login(address: str) -> Metadata:
    email = f"frozen-{uuid.uuid4().hex[:8]}@example.com"
    with grpc.insecure_channel(address) as channel:
        users = UserServiceStub(channel)
        users.CreateUser(
            user_pb2.CreateUserRequest(email=email, password="correct horse 9", display_name="A")
        )
        reply = users.Login(user_pb2.LoginRequest(email=email, password="correct horse 9"))
    return (("authorization", f"Bearer {reply.access_token}"),)


def place(address: str, who: Metadata) -> pb.Order:
    request = pb.CreateOrderRequest(
        items=[pb.OrderItem(sku="TEA-SENCHA", quantity=1)],
        shipping_address=TOKYO,
        request_id=f"req-{uuid.uuid4().hex}",
    )
    with grpc.insecure_channel(address) as channel:
        return OrderServiceStub(channel).CreateOrder(request, metadata=who, timeout=20).order  # type: ignore[no-any-return]


def test_orders_confirm_while_one_of_two_payment_instances_is_frozen(start_service: StartService) -> None:
    with ThreadPoolExecutor(4) as pool:  # in parallel: each over its own database
        started = [
            pool.submit(start_service, name, **env)
            for name, env in [
                ("user", {}),
                ("inventory", {"INVENTORY_SEED_DEMO": "1"}),
                ("shipping", {}),
                ("payment", {}),
            ]
        ]
        user, inventory, shipping, payment = (future.result() for future in started)
    payments = [payment, start_service("payment")]  # the same database (MESH_DATA_DIR): one service
    order = start_service(
        "order",
        MESH_UPSTREAM_USER=user.address,
        MESH_UPSTREAM_INVENTORY=inventory.address,
        MESH_UPSTREAM_SHIPPING=shipping.address,
        MESH_UPSTREAM_PAYMENT=",".join(p.address for p in payments),
    )
    who = login(user.address)
    for _ in range(4):  # both instances serving: the order service holds a connection to each
        assert place(order.address, who).status == pb.ORDER_STATUS_CONFIRMED

    frozen = payments[0]
    assert frozen.process is not None
    try:
        freeze(frozen.process.pid)
        with ThreadPoolExecutor(ORDERS) as pool:
            orders = list(pool.map(lambda _: place(order.address, who), range(ORDERS)))
        # Every order has returned and the instance is still frozen (resumed only below).
        assert frozen.process is not None and frozen.process.poll() is None
        statuses = [pb.OrderStatus.Name(o.status) for o in orders]
        assert statuses == ["ORDER_STATUS_CONFIRMED"] * ORDERS, [o.status_reason for o in orders]
    finally:
        frozen.signal(signal.SIGCONT)
