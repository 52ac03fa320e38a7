"""Authentication at the edge: ``AuthBackend.authenticate(headers) -> Principal | None``.

The JWT backend is :class:`mesh.verifier.JwtVerifier`, the one verifier every service uses
too: the same algorithms, keys, leeway (``MESH_JWT_LEEWAY_SECONDS``), maximum lifetime and
refusal of the mesh's reserved roles, so a token is valid at the edge exactly when it is valid
behind it. Only end users' tokens exist: a token claiming the ``service`` or ``gateway`` role
is refused whatever key signed it (services and the gateway are proved by their mesh identity,
never by a token). The verifier keeps a verified token by its exact text and re-checks its
times on every use, so a busy client costs one signature check, not one per request.

:class:`ClientForwarder` is the other direction: the gateway tells upstream services who the
client is (its TCP peer address); services believe it because the call comes from the
gateway's mesh identity, so the user service can throttle logins per client and not per
gateway.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Protocol

import grpc

from gateway.errors import GatewayError, www_authenticate
from mesh.connect.peer import peer_metadata
from mesh.identity import FORWARDED_CLIENT, InvalidToken, JwtSettings, Principal
from mesh.verifier import JwtVerifier

# RFC 6750 b64token: what a bearer credential may contain at all.
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*) *")


class AuthBackend(Protocol):
    def authenticate(self, authorization: str | None) -> Principal | None:
        """The caller of a request with this Authorization header; None when there is none.

        Raises GatewayError (UNAUTHENTICATED, with a WWW-Authenticate challenge) when a
        credential is present but not valid.
        """
        ...


def unauthenticated(realm: str, message: str, token_sent: bool) -> GatewayError:
    challenge = www_authenticate(realm, "invalid_token" if token_sent else "", message if token_sent else "")
    return GatewayError(
        grpc.StatusCode.UNAUTHENTICATED,
        message,
        reason="INVALID_TOKEN" if token_sent else "MISSING_TOKEN",
        headers=[("www-authenticate", challenge)],
    )


class JwtAuth:
    """Bearer JWT verification (verified tokens kept by the verifier, bounded)."""

    def __init__(
        self,
        settings: JwtSettings,
        realm: str = "tsunagu",
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._verifier = JwtVerifier(settings, clock, cache_size)
        self._realm = realm

    def authenticate(self, authorization: str | None) -> Principal | None:
        if authorization is None:
            return None
        match = _BEARER.fullmatch(authorization)
        if match is None:
            raise unauthenticated(self._realm, "authorization must be 'Bearer <token>'", True)
        try:
            return self._verifier.check(match.group(1)).principal
        except InvalidToken as error:  # a reserved role (service, gateway) included
            raise unauthenticated(self._realm, f"invalid token: {error}", True) from None


class ClientForwarder:
    """Metadata on every upstream call: who the client is, and (in plaintext mode) who calls.

    ``x-forwarded-client`` is the client's address as the gateway's TCP peer, never a header
    the client wrote: the gateway is the edge. Services believe it only from the gateway's
    mesh identity (services/common/auth.py): its mTLS certificate, which says so by itself, or
    in the loud plaintext debugging mode (``MESH_INSECURE=1``) the ``x-mesh-peer: gateway``
    claim added here. So a direct gRPC caller cannot pretend to be many clients. Both keys are
    reserved: a client cannot send them through ``Grpc-Metadata-*`` (gateway/headers.py).
    """

    def __init__(self, insecure: bool) -> None:
        self._identity = list(peer_metadata("gateway", insecure))

    def metadata(self, client: str) -> list[tuple[str, str | bytes]]:
        forwarded: list[tuple[str, str | bytes]] = [(FORWARDED_CLIENT, client)] if client else []
        return forwarded + self._identity


def require(principal: Principal | None, realm: str) -> Principal:
    """The principal of a protected route: 401 with a bare challenge when there is none."""
    if principal is None:
        raise unauthenticated(realm, "this route needs 'Authorization: Bearer <token>'", False)
    return principal
