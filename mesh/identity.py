"""Who is calling: the principal carried by a verified JWT.

The user service signs tokens (EdDSA); every service and the gateway verify them with the
public key, so a call reaching a service directly (grpcurl with ``-H 'authorization: Bearer
…'``) is held to the same rules as one through the gateway. Only algorithms from the settings
are accepted: the token's own ``alg`` header never chooses, and ``none`` never passes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from mesh.config import env_float, env_str
from mesh.errors import ConfigError

AUTHORIZATION = "authorization"
SERVICE_KID = "mesh-service"
ADMIN_ROLE = "admin"
SERVICE_ROLE = "service"
MAX_TOKEN_BYTES = 8192


class InvalidToken(Exception):
    """The token is missing, malformed, forged or expired; the message says which."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the token's subject and roles."""

    subject: str
    roles: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles

    @property
    def is_service(self) -> bool:
        return SERVICE_ROLE in self.roles

    def may_act_for(self, user_id: str) -> bool:
        """True when the caller is that user, an admin, or a service acting for users."""
        return self.subject == user_id or self.is_admin or self.is_service


@dataclass(frozen=True)
class JwtSettings:
    """How tokens are verified (every process) and signed (the user service only)."""

    issuer: str = "tsunagu-user"
    audience: str = "tsunagu"
    algorithms: tuple[str, ...] = ("EdDSA",)
    public_keys: Mapping[str, str] = field(default_factory=dict)
    signing_kid: str = ""
    private_key_pem: str = field(default="", repr=False)
    ttl_seconds: float = 3600.0
    leeway_seconds: float = 30.0
    service_public_key_pem: str = ""
    service_private_key_pem: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if "none" in {a.lower() for a in self.algorithms}:
            raise ConfigError("MESH_JWT_ALGORITHMS must not include 'none'")
        if self.ttl_seconds <= 0:
            raise ConfigError("MESH_JWT_TTL_SECONDS must be > 0")


class JwtVerifier:
    """Verifies bearer tokens against the configured keys; ``kid`` selects the key."""

    def __init__(self, settings: JwtSettings) -> None:
        if not settings.public_keys:
            raise ConfigError("no JWT public key configured (MESH_JWT_PUBLIC_KEY_FILE)")
        self._settings = settings
        keys = dict(settings.public_keys)
        if settings.service_public_key_pem:
            keys[SERVICE_KID] = settings.service_public_key_pem
        self._keys = {kid: _load_public_key(pem) for kid, pem in keys.items()}

    def verify(self, token: str) -> Principal:
        """The principal of a valid token; InvalidToken with the reason otherwise."""
        if len(token) > MAX_TOKEN_BYTES:
            raise InvalidToken("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise InvalidToken(f"malformed token: {error}") from None
        if header.get("alg") not in self._settings.algorithms:
            raise InvalidToken("token algorithm not accepted")
        if "jku" in header or "x5u" in header or "jwk" in header:
            raise InvalidToken("token key references are not accepted")
        key = self._keys.get(str(header.get("kid", "")))
        if key is None:
            raise InvalidToken("unknown key id")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(self._settings.algorithms),
                audience=self._settings.audience,
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_seconds,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(str(error)) from None
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidToken("roles claim must be a list of strings")
        if header.get("kid") == SERVICE_KID and set(roles) != {SERVICE_ROLE}:
            # The service key is shared by the mesh's services; it can vouch for nothing more.
            raise InvalidToken("service tokens carry only the service role")
        return Principal(subject=str(claims["sub"]), roles=frozenset(roles))

    def from_metadata(self, metadata: Iterable[tuple[str, str | bytes]]) -> Principal | None:
        """The principal of the call's ``authorization`` metadata; None when there is none."""
        for key, value in metadata:
            if key.lower() == AUTHORIZATION:
                text = value.decode() if isinstance(value, bytes) else value
                scheme, _, token = text.partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    raise InvalidToken("authorization must be 'Bearer <token>'")
                return self.verify(token.strip())
        return None


class ServiceTokens:
    """Short-lived tokens that say "this call comes from service X", minted and cached.

    A service acting for the mesh (the order service running an order's steps, possibly
    after a restart, long after the customer's token expired) authenticates as itself. The
    shared service key only ever signs the ``service`` role, and verifiers enforce that.
    """

    def __init__(self, settings: JwtSettings, service_name: str, ttl_seconds: float = 300.0) -> None:
        if not settings.service_private_key_pem:
            raise ConfigError(f"service '{service_name}' needs MESH_SERVICE_PRIVATE_KEY_FILE to call others")
        self._settings = settings
        self._subject = f"service:{service_name}"
        self._ttl = ttl_seconds
        self._token = ""
        self._expires = 0.0

    def metadata(self) -> tuple[tuple[str, str]]:
        """``authorization`` metadata with a token valid for at least a third of its life."""
        now = time.time()
        if now > self._expires - self._ttl / 3:
            claims = {
                "sub": self._subject,
                "roles": [SERVICE_ROLE],
                "iss": self._settings.issuer,
                "aud": self._settings.audience,
                "iat": int(now),
                "exp": int(now + self._ttl),
            }
            self._token = jwt.encode(
                claims,
                self._settings.service_private_key_pem,
                algorithm="EdDSA",
                headers={"kid": SERVICE_KID},
            )
            self._expires = now + self._ttl
        return ((AUTHORIZATION, f"Bearer {self._token}"),)


def _load_public_key(pem: str) -> Any:
    """Parse a PEM public key once, so a bad key fails the start rather than every call."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        return load_pem_public_key(pem.encode())
    except ValueError as error:
        raise ConfigError(f"invalid JWT public key: {error}") from None


def jwt_settings_from_env(environ: Mapping[str, str]) -> JwtSettings:
    """Read ``MESH_JWT_*``: public key file (with its kid), optional private key file, claims."""
    kid = env_str(environ, "MESH_JWT_KID", "user-1")
    public_keys: dict[str, str] = {}
    public_file = env_str(environ, "MESH_JWT_PUBLIC_KEY_FILE", "")
    if public_file:
        public_keys[kid] = _read_key(public_file, "MESH_JWT_PUBLIC_KEY_FILE")
    private_file = env_str(environ, "MESH_JWT_PRIVATE_KEY_FILE", "")
    return JwtSettings(
        issuer=env_str(environ, "MESH_JWT_ISSUER", "tsunagu-user"),
        audience=env_str(environ, "MESH_JWT_AUDIENCE", "tsunagu"),
        public_keys=public_keys,
        signing_kid=kid,
        private_key_pem=_read_key(private_file, "MESH_JWT_PRIVATE_KEY_FILE") if private_file else "",
        ttl_seconds=env_float(environ, "MESH_JWT_TTL_SECONDS", 3600.0),
        leeway_seconds=env_float(environ, "MESH_JWT_LEEWAY_SECONDS", 30.0),
        service_public_key_pem=_optional_key(environ, "MESH_SERVICE_PUBLIC_KEY_FILE"),
        service_private_key_pem=_optional_key(environ, "MESH_SERVICE_PRIVATE_KEY_FILE"),
    )


def _optional_key(environ: Mapping[str, str], variable: str) -> str:
    path = env_str(environ, variable, "")
    return _read_key(path, variable) if path else ""


def _read_key(path: str, variable: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"{variable}: cannot read {path}: {error.strerror}") from None


def generate_keypair(directory: Path, stem: str = "jwt") -> tuple[Path, Path]:
    """Write a fresh Ed25519 key pair (``<stem>-private.pem``, ``<stem>-public.pem``)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = directory / f"{stem}-private.pem"
    public = directory / f"{stem}-public.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public
