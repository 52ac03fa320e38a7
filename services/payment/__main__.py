"""``python -m services.payment``: the payment service process."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mesh.server import HostedService
from services.common.app import ServiceContext, main
from services.payment.billing import start_billing
from services.payment.domain import policy_from_settings
from services.payment.servicer import PaymentServicer
from services.payment.store import PaymentStore
from shop.payment.v1 import payment_pb2, payment_pb2_grpc

SERVICE = payment_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name


async def build(context: ServiceContext) -> Sequence[HostedService]:
    settings, database, auth = context.settings, context.database, context.auth
    servicer = PaymentServicer(PaymentStore(database), auth, policy_from_settings(settings.extra))
    start_billing(context)  # with the bus on: invoices for confirmed orders (order.confirmed)
    return [
        HostedService(
            SERVICE, lambda server: payment_pb2_grpc.add_PaymentServiceServicer_to_server(servicer, server)
        )
    ]


if __name__ == "__main__":
    main("payment", Path(__file__).parent / "migrations", build)
