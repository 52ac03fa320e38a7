"""Apply the server stack once per method, when a service is added, not on every call.

A grpc.aio server given interceptors runs the whole chain for every call: one coroutine per
interceptor, a continuation, and each layer building a new handler around the one below. The
result depends only on the method, so :class:`~mesh.server.runtime.MeshServer` registers its
services through a :class:`LayeredRegistrar` instead: it stands in for the server while the
generated ``add_*Servicer_to_server`` functions run, wraps each method handler by every layer
(:class:`~mesh.server.wrap.HandlerLayer`, innermost first) and hands the wrapped handlers to the
real server, which then has no interceptor at all. A call pays for the layers' own work and
nothing for the chain (callgrind: bench/server_instructions.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import grpc

from mesh.rpc import RpcCache
from mesh.server.wrap import HandlerLayer, Start, wrap_scopes


class LayeredRegistrar:
    """What generated ``add_*Servicer_to_server`` functions call, on behalf of a grpc.aio server.

    ``layers`` are outermost first, as :meth:`MeshServer.interceptor_stack` lists them.
    """

    def __init__(self, server: Any, layers: Sequence[HandlerLayer]) -> None:
        self._server = server
        self._layers = tuple(reversed(layers))  # innermost first: the order they wrap in
        self._rpcs = RpcCache()

    def wrap(self, method: str, handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
        """``handler`` of ``method`` (``/pkg.Service/Method``) inside every layer.

        Consecutive layers that only scope a call (deadline, tracing, metrics, the RPC log:
        :class:`~mesh.server.wrap.ScopeLayer`) become one wrapper, not one each.
        """
        scopes: list[Start] = []  # innermost first, waiting to be applied together
        for layer in self._layers:
            scope_for = getattr(layer, "scope_for", None)
            if scope_for is not None:
                start = scope_for(method)
                if start is not None:
                    scopes.append(start)
                continue
            handler = wrap_scopes(method, handler, self._rpcs, scopes[::-1])
            scopes = []
            handler = layer.wrap_handler(method, handler)
        return wrap_scopes(method, handler, self._rpcs, scopes[::-1])

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        wrapped = {name: self.wrap(f"/{service}/{name}", handler) for name, handler in handlers.items()}
        self._server.add_registered_method_handlers(service, wrapped)

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_LayeredGeneric(self, handler) for handler in handlers))


class _LayeredGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc is untyped (Any) for mypy
    """A generic handler whose answers come wrapped, each method's wrapped once and kept."""

    def __init__(self, registrar: LayeredRegistrar, inner: grpc.GenericRpcHandler) -> None:
        self._registrar = registrar
        self._inner = inner
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler | None]] = {}

    def service_name(self) -> str | None:
        name = getattr(self._inner, "service_name", None)
        return name() if callable(name) else None

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        if handler is None:
            return None
        known = self._wrapped.get(details.method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._registrar.wrap(details.method, handler)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped
