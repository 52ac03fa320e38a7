"""``python -m services.shipping``: the shipping service process."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mesh.server import HostedService
from services.common.app import main
from services.common.auth import Authenticator
from services.common.database import Database
from services.common.settings import ServiceSettings
from services.shipping.domain import policy_from_settings
from services.shipping.servicer import ShippingServicer
from services.shipping.store import ShippingStore
from shop.shipping.v1 import shipping_pb2, shipping_pb2_grpc

SERVICE = shipping_pb2.DESCRIPTOR.services_by_name["ShippingService"].full_name


async def build(
    settings: ServiceSettings, database: Database, auth: Authenticator
) -> Sequence[HostedService]:
    servicer = ShippingServicer(ShippingStore(database), auth, policy_from_settings(settings.extra))
    return [
        HostedService(
            SERVICE, lambda server: shipping_pb2_grpc.add_ShippingServiceServicer_to_server(servicer, server)
        )
    ]


if __name__ == "__main__":
    main("shipping", Path(__file__).parent / "migrations", build)
