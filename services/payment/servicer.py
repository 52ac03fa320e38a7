"""PaymentService over gRPC: proto in, domain and store, proto out; nothing more."""

from __future__ import annotations

from dataclasses import asdict

from services.common.auth import Authenticator
from services.common.context import Context
from services.common.errors import PermissionDenied
from services.common.idempotency import RequestKey
from services.common.pagination import page, page_request, parse_time_id, time_id_position
from services.common.values import money, timestamp
from services.payment import domain
from services.payment.store import InvoiceRecord, PaymentRecord, PaymentStore
from shop.payment.v1 import payment_pb2 as pb
from shop.payment.v1 import payment_pb2_grpc

# The proto enum of each state; a table because Value(name) is typed int, not the enum.
STATES = {
    domain.PaymentState.AUTHORIZED: pb.PAYMENT_STATE_AUTHORIZED,
    domain.PaymentState.CAPTURED: pb.PAYMENT_STATE_CAPTURED,
    domain.PaymentState.VOIDED: pb.PAYMENT_STATE_VOIDED,
    domain.PaymentState.REFUNDED: pb.PAYMENT_STATE_REFUNDED,
}


def payment_pb(record: PaymentRecord) -> pb.Payment:
    return pb.Payment(
        payment_id=record.payment_id,
        order_id=record.order_id,
        user_id=record.user_id,
        amount=money(record.amount_minor, record.currency),
        state=STATES[record.state],
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
    )


def invoice_pb(record: InvoiceRecord) -> pb.Invoice:
    return pb.Invoice(
        invoice_id=record.invoice_id,
        payment_id=record.payment_id,
        order_id=record.order_id,
        user_id=record.user_id,
        amount=money(record.amount_minor, record.currency),
        create_time=timestamp(record.create_time),
    )


class PaymentServicer(payment_pb2_grpc.PaymentServiceServicer):  # type: ignore[misc]  # generated grpc code is untyped (Any) for mypy
    """Payments by caller-chosen id; another user's payment or invoice answers NOT_FOUND."""

    def __init__(self, store: PaymentStore, auth: Authenticator, policy: domain.PaymentPolicy) -> None:
        self._store = store
        self._auth = auth
        self._policy = policy

    async def AuthorizePayment(
        self, request: pb.AuthorizePaymentRequest, context: Context
    ) -> pb.AuthorizePaymentResponse:
        caller = self._auth.service(context)
        amount = request.amount if request.HasField("amount") else None
        authorization = domain.validate_authorization(
            request.payment_id,
            request.order_id,
            request.user_id,
            domain.Amount(amount.currency_code, amount.units, amount.nanos) if amount is not None else None,
            request.request_id,
        )
        if not caller.may_act_for(authorization.user_id):
            raise PermissionDenied("a payment can only be authorized for yourself")
        key = RequestKey.of("AuthorizePayment", caller.subject, request.request_id, asdict(authorization))
        record = await self._store.authorize(authorization, self._policy, key)
        return pb.AuthorizePaymentResponse(payment=payment_pb(record))

    async def CapturePayment(
        self, request: pb.CapturePaymentRequest, context: Context
    ) -> pb.CapturePaymentResponse:
        caller = self._auth.service(context)
        domain.validate_payment_id(request.payment_id, request.request_id)
        key = RequestKey.of("CapturePayment", caller.subject, request.request_id, request.payment_id)
        record = await self._store.capture(request.payment_id, caller, key)
        return pb.CapturePaymentResponse(payment=payment_pb(record))

    async def VoidPayment(self, request: pb.VoidPaymentRequest, context: Context) -> pb.VoidPaymentResponse:
        caller = self._auth.service(context)
        domain.validate_payment_id(request.payment_id, request.request_id)
        key = RequestKey.of("VoidPayment", caller.subject, request.request_id, request.payment_id)
        record = await self._store.void(request.payment_id, caller, key)
        return pb.VoidPaymentResponse(payment=payment_pb(record) if record else None)

    async def RefundPayment(
        self, request: pb.RefundPaymentRequest, context: Context
    ) -> pb.RefundPaymentResponse:
        caller = self._auth.service(context)
        domain.validate_payment_id(request.payment_id, request.request_id)
        key = RequestKey.of("RefundPayment", caller.subject, request.request_id, request.payment_id)
        record = await self._store.refund(request.payment_id, caller, key)
        return pb.RefundPaymentResponse(payment=payment_pb(record))

    async def GetPayment(self, request: pb.GetPaymentRequest, context: Context) -> pb.GetPaymentResponse:
        caller = self._auth.required(context)
        domain.validate_payment_id(request.payment_id)
        record = await self._store.get_payment(request.payment_id, caller)
        return pb.GetPaymentResponse(payment=payment_pb(record))

    async def ListInvoices(
        self, request: pb.ListInvoicesRequest, context: Context
    ) -> pb.ListInvoicesResponse:
        caller = self._auth.required(context)
        wanted = page_request(request.page_size, request.page_token)
        owner = None if caller.is_admin else caller.subject
        rows = await self._store.list_invoices(owner, parse_time_id(wanted.after), wanted.fetch)
        records, token = page(rows, wanted, lambda r: time_id_position(r.create_time, r.invoice_id))
        return pb.ListInvoicesResponse(invoices=[invoice_pb(r) for r in records], next_page_token=token)

    async def GetInvoice(self, request: pb.GetInvoiceRequest, context: Context) -> pb.GetInvoiceResponse:
        caller = self._auth.required(context)
        domain.validate_invoice_id(request.invoice_id)
        record = await self._store.get_invoice(request.invoice_id, caller)
        return pb.GetInvoiceResponse(invoice=invoice_pb(record))
