"""Edge authentication: forged tokens, a cache that re-checks expiry, reserved roles, the forwarder."""

from __future__ import annotations

import pytest

from gateway.auth import ClientForwarder, JwtAuth, require
from gateway.errors import GatewayError
from mesh.identity import JwtSettings
from tests.support.tokens import KID, KeyPair
from tests.unit.gateway.forge import BAD_HEADERS, FORGED, claims, now_plus, signed


@pytest.fixture
def auth(jwt_keys: KeyPair) -> JwtAuth:
    return JwtAuth(JwtSettings(public_keys={KID: jwt_keys.public.read_text()}, leeway_seconds=0.5))


def test_a_valid_token_gives_its_principal(auth: JwtAuth, jwt_keys: KeyPair) -> None:
    principal = auth.authenticate(f"Bearer {jwt_keys.token('usr_1', ('customer',))}")
    assert principal is not None and principal.subject == "usr_1" and principal.roles == {"customer"}
    assert auth.authenticate(None) is None


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_tokens_are_refused(auth: JwtAuth, jwt_keys: KeyPair, case: str) -> None:
    with pytest.raises(GatewayError) as caught:
        auth.authenticate(f"Bearer {FORGED[case](jwt_keys)}")
    assert caught.value.http_status == 401
    challenge = dict(caught.value.headers)["www-authenticate"]
    assert challenge.startswith('Bearer realm="tsunagu", error="invalid_token"')


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_malformed_authorization_is_refused(auth: JwtAuth, case: str) -> None:
    with pytest.raises(GatewayError) as caught:
        auth.authenticate(BAD_HEADERS[case])
    assert caught.value.http_status == 401


def test_missing_token_on_a_protected_route_is_a_bare_challenge() -> None:
    with pytest.raises(GatewayError) as caught:
        require(None, "tsunagu")
    assert dict(caught.value.headers)["www-authenticate"] == 'Bearer realm="tsunagu"'


def test_none_can_never_be_configured() -> None:
    with pytest.raises(ValueError, match="none"):
        JwtSettings(algorithms=("EdDSA", "None"))


def test_cached_tokens_still_expire(jwt_keys: KeyPair) -> None:
    now = [float(now_plus(0))]
    auth = JwtAuth(
        JwtSettings(public_keys={KID: jwt_keys.public.read_text()}, leeway_seconds=0.5), clock=lambda: now[0]
    )
    token = signed(jwt_keys, claims(roles=["customer"], exp=now_plus(10)))
    assert auth.authenticate(f"Bearer {token}") is not None
    now[0] += 5
    assert auth.authenticate(f"Bearer {token}") is not None  # from the cache
    now[0] += 6
    with pytest.raises(GatewayError, match="expired"):
        auth.authenticate(f"Bearer {token}")


def test_the_forwarder_says_who_the_client_is_and_in_plaintext_mode_who_calls() -> None:
    """No token: under mTLS the gateway's certificate says who calls, so only the address travels."""
    plaintext = ClientForwarder(insecure=True)
    assert plaintext.metadata("203.0.113.7") == [
        ("x-forwarded-client", "203.0.113.7"),
        ("x-mesh-peer", "gateway"),
    ]
    assert plaintext.metadata("") == [("x-mesh-peer", "gateway")]
    mtls = ClientForwarder(insecure=False)
    assert mtls.metadata("203.0.113.7") == [("x-forwarded-client", "203.0.113.7")]
    assert mtls.metadata("") == []
