"""All five services registered in a real Consul, called through mesh channels with the
unchanged generated stubs: unary calls on every service and the server-streaming WatchOrder.
"""

from __future__ import annotations

import time

import grpc

from mesh.channel import mesh_channel
from mesh.registry import ConsulDiscovery
from mesh.registry.dev_agent import ConsulDevAgent
from shop.inventory.v1 import inventory_pb2 as inv
from shop.inventory.v1.inventory_pb2_grpc import InventoryServiceStub
from shop.order.v1 import order_pb2 as order
from shop.order.v1.order_pb2_grpc import OrderServiceStub
from shop.payment.v1 import payment_pb2 as pay
from shop.payment.v1.payment_pb2_grpc import PaymentServiceStub
from shop.shipping.v1 import shipping_pb2 as ship
from shop.shipping.v1.shipping_pb2_grpc import ShippingServiceStub
from shop.user.v1 import user_pb2 as user
from shop.user.v1.user_pb2_grpc import UserServiceStub
from tests.conftest import StartService

SERVICES = ("user", "inventory", "payment", "shipping", "order")


def wait_all_passing(agent: ConsulDevAgent, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if all(agent.passing(name) for name in SERVICES):
            return
        time.sleep(0.1)  # poll interval
    raise AssertionError({name: agent.passing(name) for name in SERVICES})


async def test_generated_stubs_work_unchanged_over_mesh_channels(
    start_service: StartService, consul_agent: ConsulDevAgent
) -> None:
    for name in SERVICES:
        extra = {"INVENTORY_SEED_DEMO": "1"} if name == "inventory" else {}
        # No MESH_UPSTREAM_*: the order service finds the others through Consul only.
        start_service(name, CONSUL_HTTP_ADDR=consul_agent.http_addr, **extra)
    wait_all_passing(consul_agent)

    discovery = ConsulDiscovery(consul_agent.http_addr)
    channels = {name: mesh_channel(name, discovery) for name in SERVICES}
    try:
        users = UserServiceStub(channels["user"])
        await users.CreateUser(
            user.CreateUserRequest(email="mia@example.com", password="correct-horse-9", display_name="Mia")
        )
        login = await users.Login(user.LoginRequest(email="mia@example.com", password="correct-horse-9"))
        me = (("authorization", f"Bearer {login.access_token}"),)

        products = await InventoryServiceStub(channels["inventory"]).ListProducts(inv.ListProductsRequest())
        assert len(products.products) == 5

        address = ship.Address(
            recipient="Mia", line1="1 Rue", city="Paris", postal_code="75001", country_code="FR"
        )
        placed = await OrderServiceStub(channels["order"]).CreateOrder(
            order.CreateOrderRequest(
                items=[order.OrderItem(sku="CUP-YUNOMI", quantity=2)],
                shipping_address=address,
                request_id="m-1",
            ),
            metadata=me,
            timeout=30,
        )
        assert placed.order.status == order.ORDER_STATUS_CONFIRMED, placed.order.status_reason

        payment = await PaymentServiceStub(channels["payment"]).GetPayment(
            pay.GetPaymentRequest(payment_id=placed.order.payment_id), metadata=me
        )
        assert payment.payment.state == pay.PAYMENT_STATE_CAPTURED
        shipment = await ShippingServiceStub(channels["shipping"]).GetShipment(
            ship.GetShipmentRequest(shipment_id=placed.order.shipment_id), metadata=me
        )
        assert shipment.shipment.state == ship.SHIPMENT_STATE_SCHEDULED

        stream = OrderServiceStub(channels["order"]).WatchOrder(
            order.WatchOrderRequest(order_id=placed.order.order_id), metadata=me, timeout=30
        )
        seen = [reply.order.status async for reply in stream]
        assert seen == [order.ORDER_STATUS_CONFIRMED]
        assert await stream.code() == grpc.StatusCode.OK
    finally:
        for channel in channels.values():
            await channel.close()
        await discovery.close()
