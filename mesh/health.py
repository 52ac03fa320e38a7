"""Readiness by the standard health protocol: poll grpc.health.v1 until it says SERVING.

Used by launchers and tests alike, so "ready" always means the same thing: the server
answers and reports SERVING, never "some time has passed".
"""

from __future__ import annotations

import subprocess
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

POLL_INTERVAL_SECONDS = 0.05


def wait_serving(
    address: str,
    timeout: float = 20.0,
    process: subprocess.Popen[bytes] | None = None,
    service: str = "",
) -> None:
    """Return once ``address`` reports SERVING; TimeoutError (or RuntimeError if ``process`` dies)."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"process exited with {process.returncode} before serving")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=0.5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last_error = f"status {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
            except grpc.RpcError as error:
                last_error = str(error.code())
            time.sleep(POLL_INTERVAL_SECONDS)
    raise TimeoutError(f"{address} not SERVING after {timeout}s ({last_error})")
