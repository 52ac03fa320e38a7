"""One set of token rules, wherever a token is checked: at the gateway and in every service.

Both sides are built from the environment exactly as their processes build them
(``gateway.settings.settings_from_env`` and the services' ``jwt_settings_from_env``), so a
rule that only one side applies, or a leeway that differs between them, fails here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest

from gateway.auth import JwtAuth
from gateway.errors import GatewayError
from gateway.settings import settings_from_env
from mesh.identity import generate_keypair, jwt_settings_from_env
from mesh.verifier import JwtVerifier
from services.common.auth import Authenticator
from services.common.errors import Unauthenticated
from tests.support.tokens import AUDIENCE, ISSUER, KID, KeyPair

YEAR_9999 = 253402300799  # 9999-12-31T23:59:59Z


def user_token(keys: KeyPair, roles: tuple[str, ...] = ("customer",), **times: int) -> str:
    return _signed(keys.private.read_text(), KID, "usr_rules", roles, times)


def other_key_token(keys: KeyPair, kid: str, roles: tuple[str, ...]) -> str:
    """Signed with a key no verifier holds (as the removed service and gateway keys now are)."""
    private, _ = generate_keypair(keys.private.parent / "other", kid)
    return _signed(private.read_text(), kid, "service:order", roles, {})


def _signed(key: str, kid: str, subject: str, roles: tuple[str, ...], times: dict[str, int]) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": subject,
        "roles": list(roles),
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
    }
    claims.update({name: now + offset for name, offset in times.items()})
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})


@dataclass(frozen=True)
class Case:
    token: Callable[[KeyPair], str]
    at_gateway: bool  # accepted at the edge
    at_service: bool  # accepted by a service called directly


CASES: dict[str, Case] = {
    # One leeway (5 s) on both sides: a little skew passes everywhere, more passes nowhere.
    "expired 3 s ago (within the leeway)": Case(lambda k: user_token(k, iat=-600, exp=-3), True, True),
    "expired 25 s ago": Case(lambda k: user_token(k, iat=-600, exp=-25), False, False),
    "issued 3 s ahead (within the leeway)": Case(lambda k: user_token(k, iat=3, exp=603), True, True),
    "issued 20 s ahead": Case(lambda k: user_token(k, iat=20, exp=620), False, False),
    "not valid before 20 s from now": Case(lambda k: user_token(k, nbf=20), False, False),
    # A maximum lifetime: exp - iat beyond it is refused however well signed.
    "expires in year 9999": Case(lambda k: user_token(k, exp=YEAR_9999 - int(time.time())), False, False),
    "lives one second past the maximum": Case(
        lambda k: user_token(k, iat=0, exp=24 * 3600 + 1), False, False
    ),
    "lives exactly the maximum": Case(lambda k: user_token(k, iat=0, exp=24 * 3600), True, True),
    # The mesh's roles are no token's: a service (or the gateway) is its mTLS identity.
    "user key claims the service role": Case(lambda k: user_token(k, ("service",)), False, False),
    "user key claims service and customer": Case(
        lambda k: user_token(k, ("customer", "service")), False, False
    ),
    "user key claims the gateway role": Case(lambda k: user_token(k, ("gateway",)), False, False),
    "the old service key id, service role": Case(
        lambda k: other_key_token(k, "mesh-service", ("service",)), False, False
    ),
    "the old gateway key id, gateway role": Case(
        lambda k: other_key_token(k, "mesh-gateway", ("gateway",)), False, False
    ),
}


@dataclass
class FakeContext:
    metadata: tuple[tuple[str, str], ...]

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata


def gateway_accepts(keys: KeyPair, token: str) -> bool:
    auth = JwtAuth(settings_from_env(keys.env("gateway")).jwt)
    try:
        return auth.authenticate(f"Bearer {token}") is not None
    except GatewayError:
        return False


def service_accepts(keys: KeyPair, token: str) -> bool:
    auth = Authenticator(
        JwtVerifier(jwt_settings_from_env(keys.env("payment"))), insecure=True, trusted_callers=("order",)
    )
    try:
        context: Any = FakeContext((("authorization", f"Bearer {token}"),))
        return auth.optional(context) is not None
    except Unauthenticated:
        return False


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_gateway_applies_the_one_rule_set(jwt_keys: KeyPair, case: str) -> None:
    rule = CASES[case]
    assert gateway_accepts(jwt_keys, rule.token(jwt_keys)) is rule.at_gateway


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_service_applies_the_one_rule_set(jwt_keys: KeyPair, case: str) -> None:
    rule = CASES[case]
    assert service_accepts(jwt_keys, rule.token(jwt_keys)) is rule.at_service
