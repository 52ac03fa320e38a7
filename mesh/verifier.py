"""The one token verifier: every rule a bearer token must pass, at the gateway and in services.

Before this module the gateway and the services each had their own idea of time (0.5 s of
clock leeway at the edge, 30 s behind it), no verifier bounded a token's lifetime, and a
service believed any key that claimed the ``service`` role. Now both build this class from
the same :class:`~mesh.identity.JwtSettings` (``MESH_JWT_*``) and nothing else decides:

* the algorithm comes from the settings, never from the token; ``none`` never passes;
  ``jku``/``x5u``/``jwk`` are refused, never fetched; ``kid`` selects the key;
* ``sub``, ``iss``, ``aud``, ``iat`` and ``exp`` are required; iss and aud must match;
* one leeway (``MESH_JWT_LEEWAY_SECONDS``, 5 s): a token is refused once ``exp + leeway``
  has passed, and when its ``iat`` or ``nbf`` is more than the leeway in the future;
* a maximum lifetime (``MESH_JWT_MAX_LIFETIME_SECONDS``, 24 h): ``exp - iat`` above it is
  refused, so a stolen token cannot be minted "valid until 9999";
* the reserved roles (``service``, ``gateway``: :data:`mesh.identity.RESERVED_ROLES`) are
  refused whatever key signed the token. A service or the gateway is proved by the
  transport, its mTLS identity (:mod:`mesh.connect.peer`), never by a token: a token is a
  bearer secret that anyone who sees it can replay (a rogue instance registered under a
  service's name once received the order service's service token that way, and used it to
  refund a payment), and a key shared by every service lets any of them speak for all.

It lives in mesh/ because both sides import mesh and neither imports the other: the gateway
must not depend on the shop's services, nor the services on the gateway. Nothing here is
shop-specific (roles are strings; only the mesh's own two are reserved).

Time is read from an injectable clock and checked here, not by PyJWT. A verified token is
kept by its exact text (bounded, least recently verified out first) and re-checked on every
use with :meth:`still_valid`, the same code and the same leeway as the first check: a client
that sends one token with every request costs one signature check, not one per request (a
fixed cost of the gateway and of every service a user's call reaches: PyJWT's decode and an
Ed25519 verification are some 100 us per token on this project's machine).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from mesh.errors import ConfigError
from mesh.identity import (
    AUTHORIZATION,
    MAX_TOKEN_BYTES,
    RESERVED_ROLES,
    InvalidToken,
    JwtSettings,
    Principal,
    load_public_key,
)


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token that passed every rule, with the times that bound its validity."""

    principal: Principal
    not_before: float  # the later of iat and nbf
    expires: float


class JwtVerifier:
    """Verifies bearer tokens against the configured keys; ``kid`` selects the key."""

    def __init__(
        self, settings: JwtSettings, clock: Callable[[], float] = time.time, cache_size: int = 10_000
    ) -> None:
        if not settings.public_keys:
            raise ConfigError("no JWT public key configured (MESH_JWT_PUBLIC_KEY_FILE)")
        self._settings = settings
        self._clock = clock
        self._keys = {kid: load_public_key(pem) for kid, pem in settings.public_keys.items()}
        self._verified: OrderedDict[str, VerifiedToken] = OrderedDict()
        self._cache_size = cache_size

    @property
    def leeway_seconds(self) -> float:
        return self._settings.leeway_seconds

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; InvalidToken with the reason otherwise."""
        return self.check(token).principal

    def check(self, token: str) -> VerifiedToken:
        """Every rule of the module docstring; InvalidToken naming the first that fails.

        A token verified before is only re-checked for time (:meth:`still_valid`).
        """
        if len(token) > MAX_TOKEN_BYTES:  # before the lookup: a huge text is not even hashed
            raise InvalidToken("token too large")
        verified = self._verified.get(token)
        if verified is not None:
            try:
                self.still_valid(verified)
            except InvalidToken:
                del self._verified[token]
                raise
            return verified
        verified = self._check_signed(token)
        self._verified[token] = verified
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return verified

    def _check_signed(self, token: str) -> VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise InvalidToken(f"malformed token: {error}") from None
        if header.get("alg") not in self._settings.algorithms:
            raise InvalidToken("token algorithm not accepted")
        if "jku" in header or "x5u" in header or "jwk" in header:
            raise InvalidToken("token key references are not accepted")
        kid = str(header.get("kid", ""))
        key = self._keys.get(kid)
        if key is None:
            raise InvalidToken("unknown key id")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=list(self._settings.algorithms),
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                # Times are checked below, with our clock and our one leeway.
                options={
                    "require": ["exp", "iat", "iss", "aud", "sub"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from None
        issued, expires = _time(claims, "iat"), _time(claims, "exp")
        not_before = max(issued, _time(claims, "nbf") if "nbf" in claims else issued)
        if expires - issued > self._settings.max_lifetime_seconds:
            raise InvalidToken("token lifetime exceeds the maximum")
        if expires <= issued:
            raise InvalidToken("token expires before it was issued")
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidToken("roles claim must be a list of strings")
        reserved = RESERVED_ROLES.intersection(roles)
        if reserved:
            raise InvalidToken(
                f"the {', '.join(sorted(reserved))} role is the mesh's own: no token may carry it"
            )
        verified = VerifiedToken(Principal(str(claims["sub"]), frozenset(roles)), not_before, expires)
        self.still_valid(verified)
        return verified

    def still_valid(self, verified: VerifiedToken) -> None:
        """InvalidToken when ``verified`` is expired or not yet valid at the clock's now."""
        now = self._clock()
        leeway = self._settings.leeway_seconds
        if now >= verified.expires + leeway:
            raise InvalidToken("token expired")
        if verified.not_before > now + leeway:
            raise InvalidToken("token not valid yet (issued or usable only in the future)")

    def from_metadata(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal | None:
        """The principal of the call's ``authorization`` metadata; None when there is none."""
        for key, value in metadata:
            if key.lower() == AUTHORIZATION:
                return self.verify(bearer_token(value))
        return None


def bearer_token(value: str | bytes) -> str:
    """The token of a ``Bearer <token>`` metadata value; InvalidToken for anything else."""
    text = value.decode() if isinstance(value, bytes) else value
    scheme, _, token = text.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("authorization must be 'Bearer <token>'")
    return token.strip()


def _time(claims: dict[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"{name} must be a number of seconds")
    return float(value)
