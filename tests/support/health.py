"""A real grpc.health.v1 server for Consul's gRPC checks, as a fixture.

Use it as tests/support/loopback.py's fixture is used:
``from tests.support.health import health_port as health_port  # the fixture``.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from tests.support.processes import free_port


@pytest.fixture
def health_port() -> Iterator[int]:
    """The port of a grpc.health.v1 server on 127.0.0.1 answering SERVING, stopped afterwards."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)
