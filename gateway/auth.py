"""Authentication at the edge: ``AuthBackend.authenticate(headers) -> Principal | None``.

The JWT backend reuses :class:`mesh.identity.JwtVerifier` (the same rules every service
applies): algorithms come from the settings only, never from the token, and ``none`` is
refused whatever its spelling; ``kid`` selects the key; ``jku``/``x5u``/``jwk`` are
refused, never fetched; exp, iat, iss, aud and sub are required and nbf is honoured, with
the gateway's small leeway. A verified token is cached by its exact text until it expires,
so a busy client costs one signature check, not one per request; expiry is re-checked on
every hit.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import grpc
import jwt

from gateway.errors import GatewayError, www_authenticate
from mesh.identity import InvalidToken, JwtSettings, JwtVerifier, Principal

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
    """Bearer JWT verification with a bounded cache of verified tokens."""

    def __init__(
        self,
        settings: JwtSettings,
        realm: str = "tsunagu",
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._verifier = JwtVerifier(settings)
        self._leeway = settings.leeway_seconds
        self._realm = realm
        self._cache: OrderedDict[str, tuple[Principal, float, float]] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock

    def authenticate(self, authorization: str | None) -> Principal | None:
        if authorization is None:
            return None
        match = _BEARER.fullmatch(authorization)
        if match is None:
            raise unauthenticated(self._realm, "authorization must be 'Bearer <token>'", True)
        token = match.group(1)
        now = self._clock()
        cached = self._cache.get(token)
        if cached is not None:
            principal, not_before, expires = cached
            if not_before - self._leeway <= now < expires + self._leeway:
                return principal
            del self._cache[token]
            raise unauthenticated(self._realm, "token expired", True)
        try:
            principal = self._verifier.verify(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except InvalidToken as error:
            raise unauthenticated(self._realm, f"invalid token: {error}", True) from None
        except jwt.PyJWTError:
            raise unauthenticated(self._realm, "invalid token", True) from None
        if principal.is_service:
            raise unauthenticated(self._realm, "service tokens are not accepted at the edge", True)
        not_before = float(claims.get("nbf", claims.get("iat", 0)))
        self._cache[token] = (principal, not_before, float(claims["exp"]))
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return principal


def require(principal: Principal | None, realm: str) -> Principal:
    """The principal of a protected route: 401 with a bare challenge when there is none."""
    if principal is None:
        raise unauthenticated(realm, "this route needs 'Authorization: Bearer <token>'", False)
    return principal
