"""The server's gate under mTLS: a caller with a verified identity that intentions allow.

The handshake has already required a client certificate chained to the current roots; this
interceptor reads the caller's SPIFFE ID from the auth context, refuses one from another trust
domain (UNAUTHENTICATED), and asks :class:`~mesh.connect.intentions.IntentionAuthorizer`
whether that service may call this one: a denial is PERMISSION_DENIED naming both services and
the reason; a caller it cannot ask about (Consul unanswerable, no answer known) is UNAVAILABLE
naming Consul, which a client may retry elsewhere. It runs inside the telemetry layers, so
refused calls are counted and logged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from cryptography import x509

from mesh.connect.ca import ConnectUnavailable
from mesh.connect.intentions import IntentionAuthorizer
from mesh.connect.peer import PEER_URI
from mesh.connect.spiffe import SpiffeId
from mesh.connect.workload import WorkloadIdentity
from mesh.server.wrap import responses, rewrap

PEER_PEM = "x509_pem_cert"
# grpc is untyped for mypy (follow_imports=skip): the servicer context is Any.
Context = Any
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class IntentionGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped (Any) for mypy
    """Admits a call only from an identity of this mesh that intentions allow."""

    def __init__(self, identity: WorkloadIdentity, authorizer: IntentionAuthorizer) -> None:
        self._identity = identity
        self._authorizer = authorizer
        self.target = authorizer.target

    def admitted(self, context: Context) -> bool:
        """Whether the caller is one intentions already allowed (no waiting, no coroutine):
        every call of a known caller; anything else goes through :meth:`admit`."""
        values = context.auth_context().get(PEER_URI)
        known = self._authorizer.cached(values[0].decode() if values else "")
        return known is not None and known.allowed

    async def admit(self, context: Context) -> None:
        """Return when the caller may call; abort the call otherwise."""
        values = context.auth_context().get(PEER_URI)
        uri = values[0].decode() if values else ""
        known = self._authorizer.cached(uri)
        if known is None:
            try:
                peer = SpiffeId.parse(uri)
            except ValueError:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, "the client certificate names no mesh service"
                )
            trust_domain = self._identity.bundle.trust_domain
            if peer.trust_domain != trust_domain:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"the client certificate is from trust domain {peer.trust_domain!r}, not {trust_domain!r}",
                )
            try:
                known = await self._authorizer.check(uri, _serial(context))
            except ConnectUnavailable as error:  # a first caller while Consul cannot answer
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
                raise  # abort() raises; this only tells the type checker
        if not known.allowed:
            caller = uri.rsplit("/", 1)[-1]
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"service {caller!r} may not call {self.target!r}: {known.reason}",
            )

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return self.wrap_handler(details.method, await continuation(details))

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        """``handler`` admitting only allowed callers (every method, health included)."""
        if handler is None:
            return None
        return rewrap(handler, lambda b: _unary(b, self), lambda b: _streaming(b, self))


def _serial(context: Context) -> str:
    """The client certificate's serial as Consul writes it (``3a:0f:…``); asked once per caller."""
    pem = context.auth_context().get(PEER_PEM)
    if not pem:
        return ""
    number = x509.load_pem_x509_certificate(pem[0]).serial_number
    digits = f"{number:x}"
    digits = digits if len(digits) % 2 == 0 else "0" + digits
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


def _unary(behaviour: Callable[..., Any], guard: IntentionGuard) -> Callable[..., Awaitable[Any]]:
    admitted, admit = guard.admitted, guard.admit

    async def guarded(request: Any, context: Context) -> Any:
        if not admitted(context):  # a caller allowed before passes without a coroutine of its own
            await admit(context)
        return await behaviour(request, context)

    return guarded


def _streaming(behaviour: Callable[..., Any], guard: IntentionGuard) -> Callable[..., AsyncIterator[Any]]:
    admitted, admit = guard.admitted, guard.admit

    async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
        if not admitted(context):
            await admit(context)
        async for item in responses(behaviour(request, context)):
            yield item

    return guarded
