"""Who is calling: the principal carried by a verified JWT, and the keys that sign one.

The user service signs tokens (EdDSA); every service and the gateway verify them with the
public key, so a call reaching a service directly (grpcurl with ``-H 'authorization: Bearer
…'``) is held to the same rules as one through the gateway. The rules themselves (algorithms,
keys, the one clock leeway, the maximum lifetime, the roles no token may carry) live in ONE
place, :mod:`mesh.verifier`, used by the gateway and the services alike.

Tokens are end users' only: the user key (``MESH_JWT_KID``) signs customers and admins. A
service is not a token: which service calls is proved by the transport (its mTLS client
certificate's SPIFFE ID, or its ``x-mesh-peer`` claim in the loud plaintext debugging mode:
:mod:`mesh.connect.peer`), and so is the gateway's standing to tell services the client
address it forwards (``FORWARDED_CLIENT``, believed only from the gateway's identity).
The roles ``service`` and ``gateway`` are reserved for those identities: a token claiming one
is refused whatever key signed it (:mod:`mesh.verifier`). There used to be shared service and
gateway signing keys; any process holding the service key (or replaying a token it signed)
could move payments, stock and shipments, which is why they are gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.config import env_float, env_str
from mesh.errors import ConfigError

AUTHORIZATION = "authorization"
ADMIN_ROLE = "admin"
SERVICE_ROLE = "service"
GATEWAY_ROLE = "gateway"
# Roles no token may carry: only the transport (the caller's mesh identity) grants them.
RESERVED_ROLES = frozenset({SERVICE_ROLE, GATEWAY_ROLE})
MAX_TOKEN_BYTES = 8192
# One clock leeway for every verifier (gateway and services), and the longest a token may
# live (exp - iat): a token "valid until 9999" is refused however well it is signed.
DEFAULT_LEEWAY_SECONDS = 5.0
MAX_LEEWAY_SECONDS = 60.0
DEFAULT_MAX_LIFETIME_SECONDS = 24 * 3600.0
# The gateway's word on who the client is (its TCP peer address), believed by a service only
# when the call comes from the gateway's mesh identity (see services/common/auth.py).
FORWARDED_CLIENT = "x-forwarded-client"


class InvalidToken(Exception):
    """The token is missing, malformed, forged or expired; the message says which."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a token's subject and roles, or a mesh service (``service:<name>``)."""

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
    leeway_seconds: float = DEFAULT_LEEWAY_SECONDS
    max_lifetime_seconds: float = DEFAULT_MAX_LIFETIME_SECONDS

    def __post_init__(self) -> None:
        if "none" in {a.lower() for a in self.algorithms}:
            raise ConfigError("MESH_JWT_ALGORITHMS must not include 'none'")
        if self.ttl_seconds <= 0:
            raise ConfigError("MESH_JWT_TTL_SECONDS must be > 0")
        if not 0 <= self.leeway_seconds <= MAX_LEEWAY_SECONDS:
            raise ConfigError(f"MESH_JWT_LEEWAY_SECONDS must be within 0..{MAX_LEEWAY_SECONDS:g}")
        if self.ttl_seconds > self.max_lifetime_seconds:
            raise ConfigError("MESH_JWT_TTL_SECONDS must not exceed MESH_JWT_MAX_LIFETIME_SECONDS")


def load_public_key(pem: str) -> Any:
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
        leeway_seconds=env_float(environ, "MESH_JWT_LEEWAY_SECONDS", DEFAULT_LEEWAY_SECONDS),
        max_lifetime_seconds=env_float(
            environ, "MESH_JWT_MAX_LIFETIME_SECONDS", DEFAULT_MAX_LIFETIME_SECONDS
        ),
    )


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
