"""PaymentService over gRPC: proto in, domain and store, proto out; nothing more."""

from __future__ import annotations

from typing import Any

import grpc

from services.common.auth import Authenticator
from services.common.errors import PermissionDenied
from services.common.values import decode_page_token, encode_page_token, money, page_size, timestamp
from services.payment import domain
from services.payment.store import InvoiceRecord, PaymentRecord, PaymentStore
from shop.payment.v1 import payment_pb2 as pb
from shop.payment.v1 import payment_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def payment_pb(record: PaymentRecord) -> pb.Payment:
    return pb.Payment(
        payment_id=record.payment_id,
        order_id=record.order_id,
        user_id=record.user_id,
        amount=money(record.amount_minor, record.currency),
        state=pb.PaymentState.Value(f"PAYMENT_STATE_{record.state.value}"),
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


class PaymentServicer(payment_pb2_grpc.PaymentServiceServicer):
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
        )
        if not caller.may_act_for(authorization.user_id):
            raise PermissionDenied("a payment can only be authorized for yourself")
        record = await self._store.authorize(authorization, self._policy)
        return pb.AuthorizePaymentResponse(payment=payment_pb(record))

    async def CapturePayment(
        self, request: pb.CapturePaymentRequest, context: Context
    ) -> pb.CapturePaymentResponse:
        caller = self._auth.service(context)
        domain.validate_payment_id(request.payment_id)
        record = await self._store.capture(request.payment_id, caller)
        return pb.CapturePaymentResponse(payment=payment_pb(record))

    async def VoidPayment(self, request: pb.VoidPaymentRequest, context: Context) -> pb.VoidPaymentResponse:
        caller = self._auth.service(context)
        domain.validate_payment_id(request.payment_id)
        record = await self._store.void(request.payment_id, caller)
        return pb.VoidPaymentResponse(payment=payment_pb(record) if record else None)

    async def RefundPayment(
        self, request: pb.RefundPaymentRequest, context: Context
    ) -> pb.RefundPaymentResponse:
        caller = self._auth.service(context)
        domain.validate_payment_id(request.payment_id)
        record = await self._store.refund(request.payment_id, caller)
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
        limit = page_size(request.page_size)
        after = domain.parse_invoice_position(decode_page_token(request.page_token))
        owner = None if caller.is_admin else caller.subject
        records = await self._store.list_invoices(owner, after, limit + 1)
        more = len(records) > limit
        records = records[:limit]
        last = records[-1] if records else None
        token = (
            encode_page_token(domain.invoice_position(last.create_time, last.invoice_id))
            if more and last
            else ""
        )
        return pb.ListInvoicesResponse(invoices=[invoice_pb(r) for r in records], next_page_token=token)

    async def GetInvoice(self, request: pb.GetInvoiceRequest, context: Context) -> pb.GetInvoiceResponse:
        caller = self._auth.required(context)
        domain.validate_invoice_id(request.invoice_id)
        record = await self._store.get_invoice(request.invoice_id, caller)
        return pb.GetInvoiceResponse(invoice=invoice_pb(record))
