"""List the shop's products through xDS with plain grpcio: no tsunagu import, no address.

    GRPC_XDS_BOOTSTRAP=.run/xds-bootstrap.json .venv/bin/python examples/xds/list_products.py

The bootstrap file (written by ``mesh xds``, which ``make run`` starts) names the control
plane; ``xds:///inventory`` asks it for the inventory service's listener, route, cluster and
endpoints, and gRPC balances over the passing instances, with the retries, outlier ejection
and timeouts the mesh's policy file maps onto xDS. ``xds_channel_credentials`` takes the
mTLS settings from the cluster too: the certificate the bootstrap's provider reads, and the
server identity (a SPIFFE ID) to accept. Only the generated stubs of the contract are used.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import grpc.experimental

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the generated stubs, shop/
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc


def main() -> None:
    credentials = grpc.xds_channel_credentials(
        fallback_credentials=grpc.experimental.insecure_channel_credentials()
    )
    with grpc.secure_channel("xds:///inventory", credentials) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        reply = stub.ListProducts(inventory_pb2.ListProductsRequest(page_size=3), timeout=20)
    for product in reply.products:
        print(f"{product.sku:<12} {product.name:<32} stock {product.stock}")


if __name__ == "__main__":
    main()
