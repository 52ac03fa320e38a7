"""``python -m services.payment``: the payment service process."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

from mesh.server import HostedService
from services.common.app import ServiceContext, main
from services.payment.billing import start_billing
from services.payment.servicer import PaymentServicer
from services.payment.settings import PaymentSettings, payment_settings_from_env
from services.payment.store import PaymentStore
from shop.payment.v1 import payment_pb2, payment_pb2_grpc

SERVICE = payment_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name


async def build(context: ServiceContext, own: PaymentSettings) -> Sequence[HostedService]:
    servicer = PaymentServicer(PaymentStore(context.database), context.auth, own.policy)
    start_billing(context, own.billing)  # with the bus on: invoices for confirmed orders
    return [
        HostedService(
            SERVICE, lambda server: payment_pb2_grpc.add_PaymentServiceServicer_to_server(servicer, server)
        )
    ]


if __name__ == "__main__":
    own = payment_settings_from_env(os.environ)  # first: a bad value stops the process here
    main("payment", Path(__file__).parent / "migrations", functools.partial(build, own=own))
