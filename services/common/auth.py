"""The caller of an RPC, read from its verified bearer token.

Services verify the JWT themselves (the gateway does too), so a direct gRPC call is held to
the same rules as a REST one, and ownership (a user sees only their own orders) is enforced
where the data lives.
"""

from __future__ import annotations

from typing import Any

import grpc

from mesh.identity import AUTHORIZATION, InvalidToken, JwtVerifier, Principal
from services.common.errors import PermissionDenied, Unauthenticated


class Authenticator:
    """Reads the principal of a call; one per process, built from the JWT settings."""

    def __init__(self, verifier: JwtVerifier) -> None:
        self._verifier = verifier

    def optional(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal | None:
        """The caller, or None for an anonymous call; UNAUTHENTICATED for a bad token."""
        try:
            return self._verifier.from_metadata(context.invocation_metadata() or ())
        except InvalidToken as error:
            raise Unauthenticated(f"invalid bearer token: {error}") from None

    def required(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The caller; UNAUTHENTICATED when the call carries no valid token."""
        principal = self.optional(context)
        if principal is None:
            raise Unauthenticated("this method needs 'authorization: Bearer <token>'")
        return principal

    def admin(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The caller, who must hold the admin role (PERMISSION_DENIED otherwise)."""
        principal = self.required(context)
        if not principal.is_admin:
            raise PermissionDenied("this method is for admins only")
        return principal

    def service(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The caller, who must be a mesh service (or an admin): for the steps of an order.

        Customers may read their payments and shipments but never move them: a customer who
        could refund or cancel their own would keep the goods and the money.
        """
        principal = self.required(context)
        if not (principal.is_service or principal.is_admin):
            raise PermissionDenied("only the shop's services (or an admin) may call this method")
        return principal


def forwarded_credentials(context: grpc.aio.ServicerContext[Any, Any]) -> tuple[tuple[str, str], ...]:
    """The caller's authorization metadata, to pass on when calling another service for them."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() == AUTHORIZATION:
            return ((AUTHORIZATION, value.decode() if isinstance(value, bytes) else value),)
    return ()
