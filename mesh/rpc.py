"""What every telemetry concern needs to know about one RPC, computed once per method.

Shared by the server interceptors (:mod:`mesh.server.wrap`) and the mesh-channel observers
of tracing and metrics.

``/shop.order.v1.OrderService/CreateOrder`` becomes service ``shop.order.v1.OrderService`` and
method ``CreateOrder``; the call type uses go-grpc-prometheus's words (``unary``,
``client_stream``, ``server_stream``, ``bidi_stream``) so metrics and spans agree on them.
"""

from __future__ import annotations

from dataclasses import dataclass

HEALTH_PREFIX = "/grpc.health.v1.Health/"

UNARY = "unary"
CLIENT_STREAM = "client_stream"
SERVER_STREAM = "server_stream"
BIDI_STREAM = "bidi_stream"


@dataclass(frozen=True, slots=True)
class Rpc:
    """One method of one service, as the interceptors label it."""

    path: str  # "/pkg.Service/Method"
    service: str
    method: str
    type: str

    @property
    def name(self) -> str:
        """The span name OpenTelemetry's conventions ask for: ``pkg.Service/Method``."""
        return self.path[1:]


def call_type(request_streaming: bool, response_streaming: bool) -> str:
    if request_streaming:
        return BIDI_STREAM if response_streaming else CLIENT_STREAM
    return SERVER_STREAM if response_streaming else UNARY


def rpc_of(path: str | bytes, type_: str) -> Rpc:
    """Split a method path; a path without a service part keeps the whole path as method."""
    text = path.decode() if isinstance(path, bytes) else path
    service, _, method = text.lstrip("/").rpartition("/")
    return Rpc(text, service or "unknown", method, type_)


class RpcCache:
    """Per-interceptor memo of :func:`rpc_of` (a service has a handful of methods)."""

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: dict[tuple[str | bytes, str], Rpc] = {}

    def get(self, path: str | bytes, type_: str) -> Rpc:
        key = (path, type_)
        rpc = self._known.get(key)
        if rpc is None:
            rpc = self._known[key] = rpc_of(path, type_)
        return rpc
