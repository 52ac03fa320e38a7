"""Token verification rules: end users' tokens only; the mesh's reserved roles from no key."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from mesh.errors import ConfigError
from mesh.identity import InvalidToken, JwtSettings, generate_keypair, jwt_settings_from_env
from mesh.verifier import JwtVerifier


@pytest.fixture
def settings(tmp_path: Path) -> JwtSettings:
    user_private, user_public = generate_keypair(tmp_path)
    return JwtSettings(
        public_keys={"user-1": user_public.read_text()},
        signing_kid="user-1",
        private_key_pem=user_private.read_text(),
    )


def sign(settings: JwtSettings, roles: list[str], *, key: str = "", kid: str = "user-1") -> str:
    now = int(time.time())
    body = {
        "sub": "x",
        "roles": roles,
        "iss": settings.issuer,
        "aud": settings.audience,
        "iat": now,
        "exp": now + 60,
    }
    return jwt.encode(body, key or settings.private_key_pem, algorithm="EdDSA", headers={"kid": kid})


def test_a_users_token_verifies_with_its_roles(settings: JwtSettings) -> None:
    principal = JwtVerifier(settings).verify(sign(settings, ["customer"]))
    assert principal.subject == "x" and principal.roles == {"customer"}
    assert not principal.is_service and not principal.is_admin


@pytest.mark.parametrize("roles", [["service"], ["gateway"], ["customer", "service"], ["admin", "gateway"]])
def test_a_token_with_a_reserved_role_is_refused_even_from_the_user_key(
    settings: JwtSettings, roles: list[str]
) -> None:
    """Only the transport proves a service (or the gateway) now: no token may claim to be one."""
    with pytest.raises(InvalidToken, match="the mesh's own"):
        JwtVerifier(settings).verify(sign(settings, roles))


def test_the_old_service_key_ids_are_unknown_keys(settings: JwtSettings, tmp_path: Path) -> None:
    private, _ = generate_keypair(tmp_path, "old-service")
    for kid in ("mesh-service", "mesh-gateway"):
        with pytest.raises(InvalidToken, match="unknown key id"):
            JwtVerifier(settings).verify(sign(settings, ["service"], key=private.read_text(), kid=kid))


def test_the_removed_key_variables_configure_nothing(tmp_path: Path) -> None:
    """MESH_SERVICE_*/MESH_GATEWAY_* are gone: setting them adds no key a token could use."""
    _, public = generate_keypair(tmp_path)
    service_private, service_public = generate_keypair(tmp_path, "service")
    settings = jwt_settings_from_env(
        {
            "MESH_JWT_PUBLIC_KEY_FILE": str(public),
            "MESH_SERVICE_PUBLIC_KEY_FILE": str(service_public),
            "MESH_GATEWAY_PUBLIC_KEY_FILE": str(service_public),
        }
    )
    assert list(settings.public_keys) == ["user-1"]
    token = sign(settings, ["customer"], key=service_private.read_text(), kid="mesh-service")
    with pytest.raises(InvalidToken):
        JwtVerifier(settings).verify(token)


def test_none_algorithm_is_refused_in_configuration() -> None:
    with pytest.raises(ConfigError):
        JwtSettings(algorithms=("none",))
