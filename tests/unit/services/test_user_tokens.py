"""Token signing: verifiable by mesh.verifier.JwtVerifier, and refused without a usable key."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mesh.errors import ConfigError
from mesh.identity import InvalidToken, JwtSettings, Principal
from mesh.verifier import JwtVerifier
from services.user.domain import Role
from services.user.tokens import TokenIssuer
from tests.support.tokens import KeyPair


@pytest.fixture
def settings(jwt_keys: KeyPair) -> JwtSettings:
    return JwtSettings(
        public_keys={"k-1": jwt_keys.public.read_text()},
        signing_kid="k-1",
        private_key_pem=jwt_keys.private.read_text(),
        ttl_seconds=900,
    )


def test_issued_token_verifies_with_the_public_key(settings: JwtSettings) -> None:
    issued = TokenIssuer(settings, clock=lambda: 1_700_000_000.7).issue("usr_1", [Role.ADMIN, Role.CUSTOMER])
    assert jwt.get_unverified_header(issued.token) == {"alg": "EdDSA", "kid": "k-1", "typ": "JWT"}
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert claims["iat"] == 1_700_000_000 and claims["exp"] == 1_700_000_900
    assert (claims["iss"], claims["aud"]) == ("tsunagu-user", "tsunagu")
    assert issued.expires_at == datetime.fromtimestamp(1_700_000_900, UTC)

    fresh = TokenIssuer(settings).issue("usr_1", [Role.ADMIN, Role.CUSTOMER])
    principal = JwtVerifier(settings).verify(fresh.token)
    assert principal == Principal("usr_1", frozenset({"admin", "customer"}))


def test_expired_token_is_refused(settings: JwtSettings) -> None:
    old = TokenIssuer(settings, clock=lambda: 1_000_000.0).issue("usr_1", [Role.CUSTOMER])
    with pytest.raises(InvalidToken):
        JwtVerifier(settings).verify(old.token)


def test_token_from_another_key_is_refused(settings: JwtSettings, tmp_path: Path) -> None:
    from mesh.identity import generate_keypair

    other_private, _ = generate_keypair(tmp_path)
    forged = TokenIssuer(replace(settings, private_key_pem=other_private.read_text())).issue(
        "usr_1", [Role.ADMIN]
    )
    with pytest.raises(InvalidToken):
        JwtVerifier(settings).verify(forged.token)


def test_no_private_key_is_a_config_error(settings: JwtSettings) -> None:
    with pytest.raises(ConfigError, match="MESH_JWT_PRIVATE_KEY_FILE"):
        TokenIssuer(replace(settings, private_key_pem=""))


def test_garbage_or_non_ed25519_key_is_a_config_error(settings: JwtSettings) -> None:
    with pytest.raises(ConfigError, match="invalid JWT private key"):
        TokenIssuer(
            replace(
                settings, private_key_pem="-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n"
            )
        )
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ConfigError, match="Ed25519"):
        TokenIssuer(replace(settings, private_key_pem=ec_pem.decode()))


def test_signing_algorithm_must_be_accepted_by_verifiers(settings: JwtSettings) -> None:
    with pytest.raises(ConfigError, match="EdDSA"):
        TokenIssuer(replace(settings, algorithms=("ES256",)))
