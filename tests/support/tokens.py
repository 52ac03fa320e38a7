"""Tokens for tests, signed with the key pairs the ``jwt_keys`` fixture writes.

Two pairs, as in production: the user service's (customer and admin tokens) and the mesh's
service pair (tokens with only the ``service`` role, for calls between services).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jwt

from mesh.identity import SERVICE_KID

ISSUER = "tsunagu-user"
AUDIENCE = "tsunagu"
KID = "user-1"
CALLERS = ("order",)  # services that call others and so hold the service signing key


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    service_private: Path
    service_public: Path

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

    def service_token(self, service: str = "order", ttl: int = 600) -> str:
        now = int(time.time())
        claims = {
            "sub": f"service:{service}",
            "roles": ["service"],
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + ttl,
        }
        return jwt.encode(
            claims, self.service_private.read_text(), algorithm="EdDSA", headers={"kid": SERVICE_KID}
        )

    def service_metadata(self, service: str = "order") -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.service_token(service)}"),)

    def env(self, service: str) -> dict[str, str]:
        """The key variables a process of ``service`` gets: signing keys only where needed."""
        env = {
            "MESH_JWT_PUBLIC_KEY_FILE": str(self.public),
            "MESH_JWT_KID": KID,
            "MESH_SERVICE_PUBLIC_KEY_FILE": str(self.service_public),
        }
        if service == "user":
            env["MESH_JWT_PRIVATE_KEY_FILE"] = str(self.private)
        if service in CALLERS:
            env["MESH_SERVICE_PRIVATE_KEY_FILE"] = str(self.service_private)
        return env
