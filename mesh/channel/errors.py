"""The statuses a MeshChannel raises itself, without a server having answered.

Each is a ``grpc.aio.AioRpcError``, as a real call's failure is, so callers handle one type;
the details name the service (the gateway and logs show which dependency is down).
"""

from __future__ import annotations

import grpc
import grpc.aio

from mesh.errors import CircuitOpen, NoHealthyEndpoint


def _status(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def no_endpoint_error(service: str) -> grpc.aio.AioRpcError:
    """UNAVAILABLE ``no healthy endpoint for 'service'``: nothing can take the call."""
    return _status(grpc.StatusCode.UNAVAILABLE, str(NoHealthyEndpoint(service)))


def circuit_open_error(service: str) -> grpc.aio.AioRpcError:
    """UNAVAILABLE ``circuit open for 'service'``: the breakers refuse the call before it is sent."""
    return _status(grpc.StatusCode.UNAVAILABLE, str(CircuitOpen(service)))


def deadline_error() -> grpc.aio.AioRpcError:
    """DEADLINE_EXCEEDED raised without sending: no time was left for an attempt."""
    return _status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
