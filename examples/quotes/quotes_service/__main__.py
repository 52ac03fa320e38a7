"""``python -m quotes_service``: serve QuoteService on the mesh.

mesh.app.main does the rest: settings from the environment, the Connect certificate for the
name "quotes", Consul registration with a gRPC health check, health and reflection (so
grpcurl needs no proto files), metrics, traces, JSON logs, and a drained stop on SIGTERM.
"""

from __future__ import annotations

from collections.abc import Sequence

from quotes.v1 import quotes_pb2, quotes_pb2_grpc

from mesh.app import AppContext, main
from mesh.server import HostedService
from quotes_service.servicer import QuoteServicer
from shop.inventory.v1.inventory_pb2_grpc import InventoryServiceStub

SERVICE = quotes_pb2.DESCRIPTOR.services_by_name["QuoteService"].full_name

# Calls to the inventory: GetProduct is a read, so it may be retried; each attempt gets
# 0.5 s, three at most, and only on codes that say "try another instance".
POLICY = {
    "services": {
        "inventory": {
            "methods": {
                "GetProduct": {
                    "idempotent": True,
                    "retry": {
                        "max_attempts": 3,
                        "per_attempt_timeout": 0.5,
                        "retryable_codes": ["UNAVAILABLE", "DEADLINE_EXCEEDED"],
                    },
                }
            }
        }
    }
}


async def build(context: AppContext) -> Sequence[HostedService]:
    inventory = InventoryServiceStub(context.channel("inventory"))  # discovery, balancing, mTLS
    servicer = QuoteServicer(inventory)
    return [
        HostedService(
            SERVICE, lambda server: quotes_pb2_grpc.add_QuoteServiceServicer_to_server(servicer, server)
        )
    ]


if __name__ == "__main__":
    main("quotes", build, port=50060, policy=POLICY)
