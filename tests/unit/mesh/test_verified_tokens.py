"""The verifier keeps verified tokens: one signature check per token, times re-checked on each use."""

from __future__ import annotations

import pytest

from mesh.identity import MAX_TOKEN_BYTES, InvalidToken, JwtSettings
from mesh.verifier import JwtVerifier, VerifiedToken
from tests.support.tokens import KID, KeyPair
from tests.unit.gateway.forge import claims, now_plus, signed


class Counting(JwtVerifier):
    """Counts the full (signature) checks."""

    signed_checks = 0

    def _check_signed(self, token: str) -> VerifiedToken:
        self.signed_checks += 1
        return super()._check_signed(token)


def verifier(keys: KeyPair, now: list[float], cache_size: int = 10_000) -> Counting:
    settings = JwtSettings(public_keys={KID: keys.public.read_text()}, leeway_seconds=0.5)
    return Counting(settings, clock=lambda: now[0], cache_size=cache_size)


def test_a_token_is_verified_once_and_still_expires(jwt_keys: KeyPair) -> None:
    now = [float(now_plus(0))]
    check = verifier(jwt_keys, now)
    token = signed(jwt_keys, claims(roles=["customer"], exp=now_plus(10)))
    for _ in range(3):
        assert check.verify(token).roles == {"customer"}
    assert check.signed_checks == 1
    now[0] += 11
    with pytest.raises(InvalidToken, match="expired"):
        check.verify(token)
    with pytest.raises(InvalidToken, match="expired"):  # dropped, so checked in full again
        check.verify(token)
    assert check.signed_checks == 2


def test_refused_tokens_are_not_kept_and_the_cache_is_bounded(jwt_keys: KeyPair) -> None:
    now = [float(now_plus(0))]
    check = verifier(jwt_keys, now, cache_size=1)
    with pytest.raises(InvalidToken):
        check.verify(signed(jwt_keys, claims(roles=["service"])))  # a reserved role
    with pytest.raises(InvalidToken):
        check.verify(signed(jwt_keys, claims(roles=["service"])))
    assert check.signed_checks == 2
    first, second = (signed(jwt_keys, claims(sub=name, roles=["customer"])) for name in ("a", "b"))
    check.verify(first)
    check.verify(second)  # pushes the first out
    check.verify(first)
    assert check.signed_checks == 5


def test_a_huge_token_is_refused_before_any_lookup_or_check(jwt_keys: KeyPair) -> None:
    check = verifier(jwt_keys, [float(now_plus(0))])
    with pytest.raises(InvalidToken, match="too large"):
        check.verify("a" * (MAX_TOKEN_BYTES + 1))
    assert check.signed_checks == 0
