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

# Calls to the inventory: GetProduct is a read, so it may be retried, only on codes that say
# "try another instance". Three attempts of 0.2 s and their backoff (at most 0.05 + 0.1 s)
# end within 0.8 s: inside the 1 s the gateway gives each attempt of a GET, so when the
# inventory is down our caller hears "inventory is unavailable", not a timeout of ours.
POLICY = {
    "services": {
        "inventory": {
            "methods": {
                "GetProduct": {
                    "idempotent": True,
                    "retry": {
                        "max_attempts": 3,
                        "per_attempt_timeout": 0.2,
                        "initial_backoff": 0.05,
                        "max_backoff": 0.1,
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
