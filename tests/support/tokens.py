"""Tokens and caller identities for tests, signed with the key pair the ``jwt_keys`` fixture writes.

One pair, as in production: the user service's (customer and admin tokens). Services and the
gateway carry no token: they are their mesh identity. Processes started by the test fixtures
run with ``MESH_INSECURE=1`` (:data:`INSECURE`), where a caller's service is its
``x-mesh-peer`` claim, so :meth:`KeyPair.service_metadata` and :meth:`KeyPair.gateway_metadata`
are that claim (the mTLS path has its own tests, with real certificates).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from mesh.connect.peer import PEER_HEADER
from mesh.identity import FORWARDED_CLIENT

ISSUER = "tsunagu-user"
AUDIENCE = "tsunagu"
KID = "user-1"
# The plaintext debugging mode every test process runs in unless a test asks for mTLS.
INSECURE = {"MESH_INSECURE": "1"}


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path

    def token(self, subject: str, roles: tuple[str, ...] = ("customer",), ttl: int = 600) -> str:
        now = int(time.time())
        claims = {
            "sub": subject,
            "roles": list(roles),
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + ttl,
        }
        return jwt.encode(claims, self.private.read_text(), algorithm="EdDSA", headers={"kid": KID})

    def metadata(self, subject: str, roles: tuple[str, ...] = ("customer",)) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token(subject, roles)}"),)

    def service_metadata(self, service: str = "order") -> tuple[tuple[str, str], ...]:
        """A call from mesh service ``service`` (its plaintext-mode claim; no token)."""
        return ((PEER_HEADER, service),)

    def gateway_metadata(self, client: str) -> tuple[tuple[str, str], ...]:
        """What the gateway adds to an upstream call: the client's address, and who it is."""
        return ((FORWARDED_CLIENT, client), (PEER_HEADER, "gateway"))

    def env(self, service: str) -> dict[str, str]:
        """The variables a process of ``service`` gets: the user key (signing only in user),
        and the plaintext mode (:data:`INSECURE`; a test asking for mTLS overrides it)."""
        env = {"MESH_JWT_PUBLIC_KEY_FILE": str(self.public), "MESH_JWT_KID": KID, **INSECURE}
        if service == "user":
            env["MESH_JWT_PRIVATE_KEY_FILE"] = str(self.private)
        return env
