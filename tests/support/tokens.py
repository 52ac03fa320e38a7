"""Tokens for tests, signed with the test key pair the ``jwt_keys`` fixture writes."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import jwt

ISSUER = "tsunagu-user"
AUDIENCE = "tsunagu"
KID = "user-1"


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
