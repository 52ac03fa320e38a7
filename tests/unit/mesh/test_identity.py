"""Token verification rules and the mesh's own service tokens."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from mesh.errors import ConfigError
from mesh.identity import SERVICE_KID, InvalidToken, JwtSettings, JwtVerifier, ServiceTokens, generate_keypair


@pytest.fixture
def settings(tmp_path: Path) -> JwtSettings:
    user_private, user_public = generate_keypair(tmp_path)
    service_private, service_public = generate_keypair(tmp_path, "service")
    return JwtSettings(
        public_keys={"user-1": user_public.read_text()},
        signing_kid="user-1",
        private_key_pem=user_private.read_text(),
        service_public_key_pem=service_public.read_text(),
        service_private_key_pem=service_private.read_text(),
    )


def sign(settings: JwtSettings, kid: str, roles: list[str], **claims: object) -> str:
    key = settings.service_private_key_pem if kid == SERVICE_KID else settings.private_key_pem
    now = int(time.time())
    body = {
        "sub": "x",
        "roles": roles,
        "iss": settings.issuer,
        "aud": settings.audience,
        "iat": now,
        "exp": now + 60,
    }
    body.update(claims)
    return jwt.encode(body, key, algorithm="EdDSA", headers={"kid": kid})


def test_service_tokens_verify_as_the_service_role(settings: JwtSettings) -> None:
    principal = JwtVerifier(settings).from_metadata(ServiceTokens(settings, "order").metadata())
    assert principal is not None
    assert principal.subject == "service:order"
    assert principal.is_service and not principal.is_admin


def test_the_service_key_cannot_vouch_for_an_admin(settings: JwtSettings) -> None:
    forged = sign(settings, SERVICE_KID, ["service", "admin"])
    with pytest.raises(InvalidToken, match="only the service role"):
        JwtVerifier(settings).verify(forged)


def test_a_user_token_signed_with_the_service_key_is_refused(settings: JwtSettings) -> None:
    with pytest.raises(InvalidToken):
        JwtVerifier(settings).verify(sign(settings, SERVICE_KID, ["customer"]))


def test_service_tokens_are_cached_then_renewed(
    settings: JwtSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = ServiceTokens(settings, "order", ttl_seconds=300)
    first = tokens.metadata()
    assert tokens.metadata() == first
    later = time.time() + 250  # past two thirds of the token's life
    monkeypatch.setattr(time, "time", lambda: later)
    assert tokens.metadata() != first


def test_a_caller_without_the_service_key_fails_at_start(settings: JwtSettings) -> None:
    with pytest.raises(ConfigError, match="MESH_SERVICE_PRIVATE_KEY_FILE"):
        ServiceTokens(JwtSettings(public_keys=settings.public_keys), "order")


def test_none_algorithm_is_refused_in_configuration() -> None:
    with pytest.raises(ConfigError):
        JwtSettings(algorithms=("none",))
