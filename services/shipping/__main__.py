"""``python -m services.shipping``: the shipping service process."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

from mesh.server import HostedService
from services.common.app import ServiceContext, main
from services.shipping.servicer import ShippingServicer
from services.shipping.settings import ShippingSettings, shipping_settings_from_env
from services.shipping.store import ShippingStore
from shop.shipping.v1 import shipping_pb2, shipping_pb2_grpc

SERVICE = shipping_pb2.DESCRIPTOR.services_by_name["ShippingService"].full_name


async def build(context: ServiceContext, own: ShippingSettings) -> Sequence[HostedService]:
    servicer = ShippingServicer(ShippingStore(context.database), context.auth, own.policy)
    return [
        HostedService(
            SERVICE, lambda server: shipping_pb2_grpc.add_ShippingServiceServicer_to_server(servicer, server)
        )
    ]


if __name__ == "__main__":
    own = shipping_settings_from_env(os.environ)  # first: a bad value stops the process here
    main("shipping", Path(__file__).parent / "migrations", functools.partial(build, own=own))
