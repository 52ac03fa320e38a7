"""The payment service as a real process, called through the generated stubs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from google.type import money_pb2
from grpc_status import rpc_status

from shop.order.v1 import events_pb2, order_pb2
from shop.payment.v1 import payment_pb2 as pb
from shop.payment.v1 import payment_pb2_grpc
from tests.conftest import StartService
from tests.support.bus import Bus, bus_namespace
from tests.support.tokens import KeyPair

Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
def bus() -> Iterator[Bus]:
    """Invoices come from the billing consumer: the service runs on its own bus namespace."""
    with bus_namespace(("billing",)) as namespace:
        yield namespace


def confirmed(payment_id: str, total: money_pb2.Money, user_id: str = "u-1") -> events_pb2.OrderEvent:
    """The order.confirmed event of the order paid by ``payment_id`` (as the relay publishes it)."""
    order = order_pb2.Order(order_id=f"o-{payment_id}", user_id=user_id, payment_id=payment_id, total=total)
    return events_pb2.OrderEvent(
        event_id=f"evt-{payment_id}", kind=events_pb2.ORDER_EVENT_KIND_CONFIRMED, order=order
    )


async def invoices_when(
    stub: payment_pb2_grpc.PaymentServiceStub, metadata: Metadata, count: int, within: float = 30.0
) -> list[pb.Invoice]:
    """ListInvoices polled until it holds ``count`` invoices (billing is asynchronous)."""
    deadline = time.monotonic() + within
    while True:
        found = list(
            (await stub.ListInvoices(pb.ListInvoicesRequest(page_size=100), metadata=metadata)).invoices
        )
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


def eur(units: int, cents: int = 0) -> money_pb2.Money:
    return money_pb2.Money(currency_code="EUR", units=units, nanos=cents * 10_000_000)


def authorize(payment_id: str, amount: money_pb2.Money, user_id: str = "u-1") -> pb.AuthorizePaymentRequest:
    return pb.AuthorizePaymentRequest(
        payment_id=payment_id, order_id=f"o-{payment_id}", user_id=user_id, amount=amount
    )


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


def violated_fields(error: grpc.aio.AioRpcError) -> set[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    return {v.field for v in bad.field_violations}


async def test_payments_invoices_and_errors(start_service: StartService, jwt_keys: KeyPair, bus: Bus) -> None:
    service = start_service("payment", **bus.env())
    customer = jwt_keys.metadata("u-1")
    order_service = jwt_keys.service_metadata("order")
    stranger = jwt_keys.metadata("u-2")
    admin = jwt_keys.metadata("admin-1", ("admin",))
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = payment_pb2_grpc.PaymentServiceStub(channel)

        # Exactly the default limit (1000.00) is authorized; a re-sent request returns the same payment.
        authorized = await stub.AuthorizePayment(authorize("p-1", eur(1000)), metadata=order_service)
        assert authorized.payment.state == pb.PAYMENT_STATE_AUTHORIZED
        assert authorized.payment.amount == eur(1000)
        again = await stub.AuthorizePayment(authorize("p-1", eur(1000)), metadata=order_service)
        assert again.payment == authorized.payment
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await stub.AuthorizePayment(authorize("p-1", eur(999)), metadata=order_service)
        assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS

        captured = await stub.CapturePayment(
            pb.CapturePaymentRequest(payment_id="p-1"), metadata=order_service
        )
        assert captured.payment.state == pb.PAYMENT_STATE_CAPTURED
        recaptured = await stub.CapturePayment(
            pb.CapturePaymentRequest(payment_id="p-1"), metadata=order_service
        )
        assert recaptured.payment == captured.payment
        # Capture issues no invoice; the order's confirmation does (billing consumer), once.
        assert not (await stub.ListInvoices(pb.ListInvoicesRequest(), metadata=customer)).invoices
        await asyncio.to_thread(bus.wait_consumer, "billing")
        await asyncio.to_thread(bus.publish, [confirmed("p-1", eur(1000)), confirmed("p-1", eur(1000))])
        invoices = await invoices_when(stub, customer, 1)
        assert [(i.payment_id, i.order_id, i.amount) for i in invoices] == [("p-1", "o-p-1", eur(1000))]
        invoice_id = invoices[0].invoice_id
        got = await stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=invoice_id), metadata=customer)
        assert got.invoice == invoices[0]

        with pytest.raises(grpc.aio.AioRpcError) as void_captured:
            await stub.VoidPayment(pb.VoidPaymentRequest(payment_id="p-1"), metadata=order_service)
        assert void_captured.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(void_captured.value).reason == "PAYMENT_CAPTURED"
        refunded = await stub.RefundPayment(pb.RefundPaymentRequest(payment_id="p-1"), metadata=order_service)
        assert refunded.payment.state == pb.PAYMENT_STATE_REFUNDED

        # One cent above the limit is declined with the reason, and nothing is stored.
        with pytest.raises(grpc.aio.AioRpcError) as declined:
            await stub.AuthorizePayment(authorize("p-2", eur(1000, 1)), metadata=order_service)
        assert declined.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_info(declined.value)
        assert (info.reason, info.domain) == ("PAYMENT_DECLINED", "shop.payment")
        assert "1000.01 EUR is above the per-payment limit of 1000.00 EUR" in (declined.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as never_stored:
            await stub.GetPayment(pb.GetPaymentRequest(payment_id="p-2"), metadata=customer)
        assert never_stored.value.code() == grpc.StatusCode.NOT_FOUND

        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.AuthorizePayment(
                pb.AuthorizePaymentRequest(payment_id="bad id"), metadata=order_service
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violated_fields(bad.value) == {"payment_id", "order_id", "user_id", "amount"}
        with pytest.raises(grpc.aio.AioRpcError) as bad_amount:
            odd = money_pb2.Money(currency_code="eur", units=1, nanos=5)
            await stub.AuthorizePayment(authorize("p-3", odd), metadata=order_service)
        assert violated_fields(bad_amount.value) == {"amount.currency_code", "amount.nanos"}

        # Another user's payment and invoice do not exist for them; the owner's are untouched.
        for call in (
            stub.GetPayment(pb.GetPaymentRequest(payment_id="p-1"), metadata=stranger),
            stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=invoice_id), metadata=stranger),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as hidden:
                await call
            assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        assert not (await stub.ListInvoices(pb.ListInvoicesRequest(), metadata=stranger)).invoices
        # Customers never move money themselves, not even their own: only the order service does.
        for call in (
            stub.AuthorizePayment(authorize("p-4", eur(5)), metadata=customer),
            stub.CapturePayment(pb.CapturePaymentRequest(payment_id="p-1"), metadata=customer),
            stub.VoidPayment(pb.VoidPaymentRequest(payment_id="p-1"), metadata=customer),
            stub.RefundPayment(pb.RefundPaymentRequest(payment_id="p-1"), metadata=customer),
            stub.RefundPayment(pb.RefundPaymentRequest(payment_id="p-1"), metadata=stranger),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as not_a_service:
                await call
            assert not_a_service.value.code() == grpc.StatusCode.PERMISSION_DENIED
        seen_by_admin = await stub.GetPayment(pb.GetPaymentRequest(payment_id="p-1"), metadata=admin)
        assert seen_by_admin.payment.state == pb.PAYMENT_STATE_REFUNDED

        # Voiding an unknown payment is a no-op, so a compensation can be re-sent.
        unknown = await stub.VoidPayment(
            pb.VoidPaymentRequest(payment_id="never-made"), metadata=order_service
        )
        assert not unknown.HasField("payment")

        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.AuthorizePayment(authorize("p-5", eur(5)))
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as anonymous_list:
            await stub.ListInvoices(pb.ListInvoicesRequest())
        assert anonymous_list.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_service_pays_for_users_and_the_limit_comes_from_the_environment(
    start_service: StartService, jwt_keys: KeyPair, bus: Bus
) -> None:
    service = start_service("payment", PAYMENT_DECLINE_ABOVE_MINOR="500", **bus.env())
    saga = jwt_keys.service_metadata("order")
    admin = jwt_keys.metadata("admin-1", ("admin",))
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = payment_pb2_grpc.PaymentServiceStub(channel)
        for n, user in enumerate(("u-1", "u-2", "u-1")):
            await stub.AuthorizePayment(authorize(f"s-{n}", eur(5), user_id=user), metadata=saga)
            await stub.CapturePayment(pb.CapturePaymentRequest(payment_id=f"s-{n}"), metadata=saga)
        await stub.AuthorizePayment(authorize("s-void", eur(2)), metadata=saga)
        voided = await stub.VoidPayment(pb.VoidPaymentRequest(payment_id="s-void"), metadata=saga)
        assert voided.payment.state == pb.PAYMENT_STATE_VOIDED
        with pytest.raises(grpc.aio.AioRpcError) as declined:
            await stub.AuthorizePayment(authorize("s-big", eur(5, 1)), metadata=saga)
        assert error_info(declined.value).reason == "PAYMENT_DECLINED"
        await asyncio.to_thread(bus.wait_consumer, "billing")
        users = ("u-1", "u-2", "u-1")
        await asyncio.to_thread(
            bus.publish, [confirmed(f"s-{n}", eur(5), user) for n, user in enumerate(users)]
        )
        assert len(await invoices_when(stub, admin, 3)) == 3

        first = await stub.ListInvoices(pb.ListInvoicesRequest(page_size=2), metadata=admin)
        assert [i.payment_id for i in first.invoices] == ["s-2", "s-1"] and first.next_page_token
        rest = await stub.ListInvoices(
            pb.ListInvoicesRequest(page_size=2, page_token=first.next_page_token), metadata=admin
        )
        assert [i.payment_id for i in rest.invoices] == ["s-0"] and not rest.next_page_token
        with pytest.raises(grpc.aio.AioRpcError) as forged:
            await stub.ListInvoices(pb.ListInvoicesRequest(page_token="not-ours"), metadata=admin)
        assert violated_fields(forged.value) == {"page_token"}
