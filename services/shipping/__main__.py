"""``python -m services.shipping``: the shipping service process."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mesh.server import HostedService
from services.common.app import ServiceContext, main
from services.shipping.domain import policy_from_settings
from services.shipping.servicer import ShippingServicer
from services.shipping.store import ShippingStore
from shop.shipping.v1 import shipping_pb2, shipping_pb2_grpc

SERVICE = shipping_pb2.DESCRIPTOR.services_by_name["ShippingService"].full_name


async def build(context: ServiceContext) -> Sequence[HostedService]:
    settings, database, auth = context.settings, context.database, context.auth
    servicer = ShippingServicer(ShippingStore(database), auth, policy_from_settings(settings.extra))
    return [
        HostedService(
            SERVICE, lambda server: shipping_pb2_grpc.add_ShippingServiceServicer_to_server(servicer, server)
        )
    ]


if __name__ == "__main__":
    main("shipping", Path(__file__).parent / "migrations", build)
