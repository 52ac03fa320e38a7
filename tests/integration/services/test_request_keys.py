"""A request_id names one request: re-sent with the same body it returns the first result,
re-used with a different body it is refused (ALREADY_EXISTS, ErrorInfo IDEMPOTENCY_KEY_REUSED
naming the key), on every RPC that takes one. CreateOrder and CancelOrder
are tested with the whole shop in test_order_service.py, CreateUser in test_user_service.py."""

from __future__ import annotations

from collections.abc import Awaitable

import grpc
import pytest
from google.rpc import error_details_pb2
from google.type import money_pb2
from grpc_status import rpc_status

from shop.inventory.v1 import inventory_pb2 as inv
from shop.inventory.v1.inventory_pb2_grpc import InventoryServiceStub
from shop.payment.v1 import payment_pb2 as pay
from shop.payment.v1.payment_pb2_grpc import PaymentServiceStub
from shop.shipping.v1 import shipping_pb2 as ship
from shop.shipping.v1.shipping_pb2_grpc import ShippingServiceStub
from shop.user.v1 import user_pb2
from shop.user.v1.user_pb2_grpc import UserServiceStub
from tests.conftest import StartService
from tests.support.tokens import KeyPair

REASON = "IDEMPOTENCY_KEY_REUSED"
TOKYO = ship.Address(
    recipient="Ada", line1="1-1 Chiyoda", city="Tokyo", postal_code="100-0001", country_code="JP"
)
OSAKA = ship.Address(
    recipient="Ada", line1="2-2 Kita", city="Osaka", postal_code="530-0001", country_code="JP"
)


async def refused(call: Awaitable[object], field: str, key: str) -> grpc.aio.AioRpcError:
    """Await ``call`` and check it is refused as a reused key, the ErrorInfo naming the key."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error
    status = rpc_status.from_call(error)
    assert status is not None
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert [(i.reason, dict(i.metadata)) for i in infos] == [(REASON, {field: key})], infos
    assert key in (error.details() or "")
    return error


def eur(units: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code="EUR", units=units)


def authorize(payment_id: str, units: int, request_id: str = "") -> pay.AuthorizePaymentRequest:
    return pay.AuthorizePaymentRequest(
        payment_id=payment_id,
        order_id=f"o-{payment_id}",
        user_id="u-1",
        amount=eur(units),
        request_id=request_id,
    )


async def test_authorize_payment_refuses_a_reused_key(start_service: StartService, jwt_keys: KeyPair) -> None:
    service = start_service("payment")
    order = jwt_keys.service_metadata("order")
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = PaymentServiceStub(channel)
        first = await stub.AuthorizePayment(authorize("p-1", 10, "k-auth"), metadata=order)
        again = await stub.AuthorizePayment(authorize("p-1", 10, "k-auth"), metadata=order)
        assert again.payment == first.payment
        # The request_id names the request: another payment under the same key is refused...
        await refused(
            stub.AuthorizePayment(authorize("p-2", 10, "k-auth"), metadata=order), "request_id", "k-auth"
        )
        # ...and so is the payment id itself (its own key) with other terms, with or without a request_id.
        await refused(
            stub.AuthorizePayment(authorize("p-1", 11, "k-other"), metadata=order), "payment_id", "p-1"
        )
        await refused(stub.AuthorizePayment(authorize("p-1", 11), metadata=order), "payment_id", "p-1")
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.GetPayment(pay.GetPaymentRequest(payment_id="p-2"), metadata=order)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_capture_void_and_refund_refuse_a_reused_key(
    start_service: StartService, jwt_keys: KeyPair
) -> None:
    service = start_service("payment")
    order = jwt_keys.service_metadata("order")
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = PaymentServiceStub(channel)
        for payment_id in ("p-1", "p-2", "p-3", "p-4"):
            await stub.AuthorizePayment(authorize(payment_id, 10), metadata=order)
        captured = await stub.CapturePayment(
            pay.CapturePaymentRequest(payment_id="p-1", request_id="k-cap"), metadata=order
        )
        again = await stub.CapturePayment(
            pay.CapturePaymentRequest(payment_id="p-1", request_id="k-cap"), metadata=order
        )
        assert again.payment == captured.payment
        await refused(
            stub.CapturePayment(
                pay.CapturePaymentRequest(payment_id="p-2", request_id="k-cap"), metadata=order
            ),
            "request_id",
            "k-cap",
        )
        await stub.VoidPayment(pay.VoidPaymentRequest(payment_id="p-3", request_id="k-void"), metadata=order)
        await stub.VoidPayment(pay.VoidPaymentRequest(payment_id="p-3", request_id="k-void"), metadata=order)
        await refused(
            stub.VoidPayment(pay.VoidPaymentRequest(payment_id="p-4", request_id="k-void"), metadata=order),
            "request_id",
            "k-void",
        )
        await stub.CapturePayment(pay.CapturePaymentRequest(payment_id="p-2"), metadata=order)
        await stub.RefundPayment(
            pay.RefundPaymentRequest(payment_id="p-1", request_id="k-ref"), metadata=order
        )
        await stub.RefundPayment(
            pay.RefundPaymentRequest(payment_id="p-1", request_id="k-ref"), metadata=order
        )
        await refused(
            stub.RefundPayment(
                pay.RefundPaymentRequest(payment_id="p-2", request_id="k-ref"), metadata=order
            ),
            "request_id",
            "k-ref",
        )
        states = {
            payment_id: (
                await stub.GetPayment(pay.GetPaymentRequest(payment_id=payment_id), metadata=order)
            ).payment.state
            for payment_id in ("p-2", "p-4")
        }
        assert states == {"p-2": pay.PAYMENT_STATE_CAPTURED, "p-4": pay.PAYMENT_STATE_AUTHORIZED}


def schedule(
    shipment_id: str, address: ship.Address = TOKYO, request_id: str = ""
) -> ship.ScheduleShipmentRequest:
    return ship.ScheduleShipmentRequest(
        shipment_id=shipment_id,
        order_id=f"o-{shipment_id}",
        user_id="u-1",
        address=address,
        request_id=request_id,
    )


async def test_schedule_and_cancel_shipment_refuse_a_reused_key(
    start_service: StartService, jwt_keys: KeyPair
) -> None:
    service = start_service("shipping")
    order = jwt_keys.service_metadata("order")
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = ShippingServiceStub(channel)
        first = await stub.ScheduleShipment(schedule("s-1", request_id="k-ship"), metadata=order)
        again = await stub.ScheduleShipment(schedule("s-1", request_id="k-ship"), metadata=order)
        assert again.shipment == first.shipment
        await refused(
            stub.ScheduleShipment(schedule("s-2", request_id="k-ship"), metadata=order),
            "request_id",
            "k-ship",
        )
        await refused(stub.ScheduleShipment(schedule("s-1", OSAKA), metadata=order), "shipment_id", "s-1")
        await stub.ScheduleShipment(schedule("s-3"), metadata=order)

        cancelled = await stub.CancelShipment(
            ship.CancelShipmentRequest(shipment_id="s-1", request_id="k-cancel"), metadata=order
        )
        again_cancelled = await stub.CancelShipment(
            ship.CancelShipmentRequest(shipment_id="s-1", request_id="k-cancel"), metadata=order
        )
        assert again_cancelled.shipment == cancelled.shipment
        await refused(
            stub.CancelShipment(
                ship.CancelShipmentRequest(shipment_id="s-3", request_id="k-cancel"), metadata=order
            ),
            "request_id",
            "k-cancel",
        )
        kept = await stub.GetShipment(ship.GetShipmentRequest(shipment_id="s-3"), metadata=order)
        assert kept.shipment.state == ship.SHIPMENT_STATE_SCHEDULED


def reserve(reservation_id: str, quantity: int = 1, request_id: str = "") -> inv.ReserveStockRequest:
    return inv.ReserveStockRequest(
        reservation_id=reservation_id,
        order_id=f"o-{reservation_id}",
        items=[inv.StockItem(sku="CUP-KYUSU", quantity=quantity)],
        request_id=request_id,
    )


async def test_restock_refuses_a_reused_key(start_service: StartService, jwt_keys: KeyPair) -> None:
    service = start_service("inventory", INVENTORY_SEED_DEMO="1")
    admin = jwt_keys.metadata("admin-1", ("admin",))
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = InventoryServiceStub(channel)
        before = (await stub.GetProduct(inv.GetProductRequest(sku="CUP-KYUSU"))).product.stock
        restock = inv.RestockProductRequest(sku="CUP-KYUSU", quantity=5, request_id="k-restock")
        first = await stub.RestockProduct(restock, metadata=admin)
        again = await stub.RestockProduct(restock, metadata=admin)
        assert first.product.stock == again.product.stock == before + 5
        more = inv.RestockProductRequest(sku="CUP-KYUSU", quantity=50, request_id="k-restock")
        await refused(stub.RestockProduct(more, metadata=admin), "request_id", "k-restock")
        other = inv.RestockProductRequest(sku="CUP-YUNOMI", quantity=5, request_id="k-restock")
        await refused(stub.RestockProduct(other, metadata=admin), "request_id", "k-restock")
        assert (await stub.GetProduct(inv.GetProductRequest(sku="CUP-KYUSU"))).product.stock == before + 5


async def test_reserve_release_and_commit_refuse_a_reused_key(
    start_service: StartService, jwt_keys: KeyPair
) -> None:
    service = start_service("inventory", INVENTORY_SEED_DEMO="1")
    order = jwt_keys.service_metadata("order")
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = InventoryServiceStub(channel)
        first = await stub.ReserveStock(reserve("r-1", request_id="k-res"), metadata=order)
        again = await stub.ReserveStock(reserve("r-1", request_id="k-res"), metadata=order)
        assert again.reservation == first.reservation
        await refused(
            stub.ReserveStock(reserve("r-2", request_id="k-res"), metadata=order), "request_id", "k-res"
        )
        await refused(stub.ReserveStock(reserve("r-1", quantity=2), metadata=order), "reservation_id", "r-1")
        for reservation_id in ("r-3", "r-4", "r-5"):
            await stub.ReserveStock(reserve(reservation_id), metadata=order)

        for _ in range(2):
            await stub.ReleaseStock(
                inv.ReleaseStockRequest(reservation_id="r-1", request_id="k-rel"), metadata=order
            )
        await refused(
            stub.ReleaseStock(
                inv.ReleaseStockRequest(reservation_id="r-3", request_id="k-rel"), metadata=order
            ),
            "request_id",
            "k-rel",
        )
        for _ in range(2):
            await stub.CommitStock(
                inv.CommitStockRequest(reservation_id="r-4", request_id="k-com"), metadata=order
            )
        await refused(
            stub.CommitStock(
                inv.CommitStockRequest(reservation_id="r-5", request_id="k-com"), metadata=order
            ),
            "request_id",
            "k-com",
        )
        states = [
            (
                await stub.GetReservation(inv.GetReservationRequest(reservation_id=r), metadata=order)
            ).reservation.state
            for r in ("r-3", "r-5")
        ]
        assert states == [inv.RESERVATION_STATE_HELD, inv.RESERVATION_STATE_HELD]


async def test_update_user_refuses_a_reused_key(start_service: StartService, jwt_keys: KeyPair) -> None:
    service = start_service("user")
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = UserServiceStub(channel)
        ada = (
            await stub.CreateUser(
                user_pb2.CreateUserRequest(
                    email="ada@example.com", password="correct horse", display_name="Ada"
                )
            )
        ).user
        me = jwt_keys.metadata(ada.user_id)

        def rename(name: str, request_id: str) -> user_pb2.UpdateUserRequest:
            return user_pb2.UpdateUserRequest(
                user=user_pb2.User(user_id=ada.user_id, display_name=name),
                update_mask={"paths": ["display_name"]},
                request_id=request_id,
            )

        first = await stub.UpdateUser(rename("Ada L.", "k-rename"), metadata=me)
        assert first.user.display_name == "Ada L."
        again = await stub.UpdateUser(rename("Ada L.", "k-rename"), metadata=me)
        assert again.user.display_name == "Ada L."
        await refused(stub.UpdateUser(rename("Countess", "k-rename"), metadata=me), "request_id", "k-rename")
        got = await stub.GetUser(user_pb2.GetUserRequest(user_id=ada.user_id), metadata=me)
        assert got.user.display_name == "Ada L."
