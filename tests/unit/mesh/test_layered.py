"""LayeredRegistrar: each method's handler wrapped by every layer, outermost first, once."""

from __future__ import annotations

from typing import Any

import grpc

from mesh.server.layered import LayeredRegistrar


class Tagging:
    """A layer that records each wrap and marks the handler it returns with its name."""

    def __init__(self, name: str, wraps: list[tuple[str, str]]) -> None:
        self.name = name
        self._wraps = wraps

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        if handler is None:
            return None
        self._wraps.append((self.name, method))
        inner = handler.unary_unary
        name = self.name

        def tagged(request: list[str], context: Any) -> list[str]:
            return [name, *inner(request, context)]

        return grpc.unary_unary_rpc_method_handler(tagged)


class RecordingServer:
    """Stands in for grpc.aio.Server: keeps what the registrar hands on."""

    def __init__(self) -> None:
        self.registered: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        self.generic: tuple[grpc.GenericRpcHandler, ...] = ()

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.registered[service] = handlers

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self.generic = handlers


def echo(request: list[str], context: Any) -> list[str]:
    return ["servicer"]


class Details(grpc.HandlerCallDetails):  # type: ignore[misc]
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def test_registered_methods_are_wrapped_outermost_first() -> None:
    wraps: list[tuple[str, str]] = []
    server = RecordingServer()
    registrar = LayeredRegistrar(server, [Tagging("outer", wraps), Tagging("inner", wraps)])
    registrar.add_registered_method_handlers("pkg.Svc", {"Get": grpc.unary_unary_rpc_method_handler(echo)})
    handler = server.registered["pkg.Svc"]["Get"]
    assert handler.unary_unary([], None) == ["outer", "inner", "servicer"]
    assert wraps == [("inner", "/pkg.Svc/Get"), ("outer", "/pkg.Svc/Get")]


def test_a_generic_handler_wraps_each_method_once_and_passes_unknown_methods_on() -> None:
    wraps: list[tuple[str, str]] = []
    server = RecordingServer()
    registrar = LayeredRegistrar(server, [Tagging("only", wraps)])
    generic = grpc.method_handlers_generic_handler(
        "pkg.Svc", {"Get": grpc.unary_unary_rpc_method_handler(echo)}
    )
    registrar.add_generic_rpc_handlers([generic])
    (layered,) = server.generic
    first = layered.service(Details("/pkg.Svc/Get"))
    second = layered.service(Details("/pkg.Svc/Get"))
    assert first is second and first.unary_unary([], None) == ["only", "servicer"]
    assert wraps == [("only", "/pkg.Svc/Get")]
    assert layered.service(Details("/pkg.Svc/Missing")) is None
