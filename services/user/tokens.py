"""Signing access tokens: the one place the private key is used.

Only the user service holds the private key; every other process verifies with the public
key (``mesh.verifier.JwtVerifier``). The key is loaded and checked when the issuer is built,
so a missing or wrong key stops the service at start rather than failing every login.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from mesh.errors import ConfigError
from mesh.identity import JwtSettings
from services.user.domain import Role, build_claims

ALGORITHM = "EdDSA"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_at: datetime


class TokenIssuer:
    """Builds and signs access tokens (EdDSA, ``kid`` header) from the JWT settings."""

    def __init__(self, settings: JwtSettings, clock: Callable[[], float] = time.time) -> None:
        if not settings.private_key_pem:
            raise ConfigError("the user service signs tokens: set MESH_JWT_PRIVATE_KEY_FILE")
        if not settings.signing_kid:
            raise ConfigError("the user service needs a key id: set MESH_JWT_KID")
        if ALGORITHM not in settings.algorithms:
            raise ConfigError(
                f"tokens are signed with {ALGORITHM}, which MESH_JWT_ALGORITHMS does not accept"
            )
        try:
            key = load_pem_private_key(settings.private_key_pem.encode(), password=None)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"invalid JWT private key: {error}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError("the JWT private key must be an Ed25519 key")
        self._key = key
        self._settings = settings
        self._clock = clock

    def issue(self, user_id: str, roles: Iterable[Role]) -> IssuedToken:
        """A signed token for ``user_id`` valid for the configured ttl."""
        claims = build_claims(
            user_id,
            roles,
            issuer=self._settings.issuer,
            audience=self._settings.audience,
            now=int(self._clock()),
            ttl_seconds=self._settings.ttl_seconds,
        )
        token = jwt.encode(
            claims, self._key, algorithm=ALGORITHM, headers={"kid": self._settings.signing_kid}
        )
        return IssuedToken(token, datetime.fromtimestamp(claims["exp"], UTC))
