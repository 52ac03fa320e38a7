"""The Authenticator's rules: who a call is from, when no token can say it's a service.

A service principal comes from the caller's mesh identity alone (its mTLS certificate's SPIFFE
ID, or in plaintext mode its ``x-mesh-peer`` claim) and only for the trusted callers; the
client address the gateway forwards is believed only from the gateway's identity; a token
claiming a reserved role is refused. Each rule is checked in both modes, with a fake context
whose auth context is what grpc fills from a client certificate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from mesh.connect.peer import PEER_URI, peer_metadata
from mesh.connect.spiffe import SpiffeId
from mesh.identity import Principal, jwt_settings_from_env
from mesh.verifier import JwtVerifier
from services.common.auth import Authenticator
from services.common.errors import PermissionDenied, Unauthenticated
from tests.support.tokens import KeyPair

TRUST_DOMAIN = "7f3c2a10-0000-4000-8000-000000000000.consul"
CLIENT = "ipv4:127.0.0.1:40000"


@dataclass
class FakeContext:
    metadata: tuple[tuple[str, str], ...] = ()
    address: str = CLIENT
    properties: dict[str, list[bytes]] = field(default_factory=dict)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def peer(self) -> str:
        return self.address

    def auth_context(self) -> dict[str, list[bytes]]:
        return self.properties


def call_from(service: str | None, insecure: bool, *metadata: tuple[str, str]) -> Any:
    """A call from mesh service ``service`` (None: no identity), as each mode carries it."""
    if service is None:
        return FakeContext(tuple(metadata))
    if insecure:
        return FakeContext((*metadata, *peer_metadata(service, insecure=True)))
    uri = SpiffeId(TRUST_DOMAIN, "default", "dc1", service).uri.encode()
    return FakeContext(tuple(metadata), properties={PEER_URI: [uri]})


def authenticator(keys: KeyPair, insecure: bool, trusted: tuple[str, ...] = ("order",)) -> Authenticator:
    verifier = JwtVerifier(jwt_settings_from_env(keys.env("payment")))
    return Authenticator(verifier, insecure=insecure, trusted_callers=trusted)


MODES = pytest.mark.parametrize("insecure", [False, True], ids=["mtls", "plaintext"])


@MODES
def test_a_trusted_callers_identity_is_a_service_principal(jwt_keys: KeyPair, insecure: bool) -> None:
    auth = authenticator(jwt_keys, insecure)
    principal = auth.service(call_from("order", insecure))
    assert principal == Principal("service:order", frozenset({"service"}))
    assert principal.is_service and principal.may_act_for("usr_anyone") and not principal.is_admin


@MODES
@pytest.mark.parametrize("caller", ["shipping", "gateway", None])
def test_another_service_or_no_identity_is_anonymous(
    jwt_keys: KeyPair, insecure: bool, caller: str | None
) -> None:
    auth = authenticator(jwt_keys, insecure)
    context = call_from(caller, insecure)
    assert auth.optional(context) is None
    with pytest.raises(Unauthenticated):
        auth.service(context)


@MODES
def test_trusted_callers_are_the_settings_choice(jwt_keys: KeyPair, insecure: bool) -> None:
    auth = authenticator(jwt_keys, insecure, trusted=("billing", "order"))
    assert auth.required(call_from("billing", insecure)).subject == "service:billing"
    assert authenticator(jwt_keys, insecure, trusted=()).optional(call_from("order", insecure)) is None


@MODES
def test_a_users_token_names_the_caller_even_from_a_trusted_service(
    jwt_keys: KeyPair, insecure: bool
) -> None:
    """A bearer token wins: a customer's call stays the customer's, whoever relays it."""
    auth = authenticator(jwt_keys, insecure)
    context = call_from("order", insecure, *jwt_keys.metadata("usr_ada"))
    assert auth.required(context).subject == "usr_ada"
    with pytest.raises(PermissionDenied):
        auth.service(context)


@MODES
@pytest.mark.parametrize("roles", [("service",), ("gateway",), ("customer", "service")])
def test_a_token_with_a_reserved_role_is_refused(
    jwt_keys: KeyPair, insecure: bool, roles: tuple[str, ...]
) -> None:
    auth = authenticator(jwt_keys, insecure)
    for caller in (None, "order"):  # not even when it comes from a trusted caller
        with pytest.raises(Unauthenticated, match="invalid bearer token"):
            auth.optional(call_from(caller, insecure, *jwt_keys.metadata("service:order", roles)))


def test_plaintext_claims_count_only_in_plaintext_mode(jwt_keys: KeyPair) -> None:
    """Under mTLS an ``x-mesh-peer`` header is just a header: only the certificate names a service."""
    auth = authenticator(jwt_keys, insecure=False)
    assert auth.optional(call_from("order", True)) is None
    assert auth.source(call_from("gateway", True, ("x-forwarded-client", "203.0.113.7"))) == "127.0.0.1"


def test_two_claims_are_none(jwt_keys: KeyPair) -> None:
    auth = authenticator(jwt_keys, insecure=True)
    twice: Any = FakeContext((("x-mesh-peer", "order"), ("x-mesh-peer", "order")))
    assert auth.optional(twice) is None


@MODES
def test_the_gateways_identity_makes_a_forwarded_address_believed(jwt_keys: KeyPair, insecure: bool) -> None:
    auth = authenticator(jwt_keys, insecure)
    forwarded = ("x-forwarded-client", "203.0.113.7")
    assert auth.source(call_from("gateway", insecure, forwarded)) == "203.0.113.7"
    assert (
        auth.source(call_from("gateway", insecure, ("x-forwarded-client", "2001:db8::1"))) == "2001:db8::/64"
    )
    # The gateway's word, once: a second value (a client smuggling one in) is not believed.
    twice = call_from("gateway", insecure, forwarded, ("x-forwarded-client", "198.51.100.1"))
    assert auth.source(twice) == "127.0.0.1"
    # Not an address: the peer's address.
    assert auth.source(call_from("gateway", insecure, ("x-forwarded-client", "nope"))) == "127.0.0.1"


@MODES
@pytest.mark.parametrize("caller", ["order", "user", None])
def test_anyone_elses_forwarded_address_is_ignored(
    jwt_keys: KeyPair, insecure: bool, caller: str | None
) -> None:
    auth = authenticator(jwt_keys, insecure)
    context = call_from(caller, insecure, ("x-forwarded-client", "203.0.113.7"))
    assert auth.source(context) == "127.0.0.1"


def test_a_user_token_claiming_the_gateway_role_forwards_nothing(jwt_keys: KeyPair) -> None:
    """The old proof (a token with the gateway role) is no proof: the role is no token's."""
    auth = authenticator(jwt_keys, insecure=True)
    proof = ("authorization", f"Bearer {jwt_keys.token('x', ('gateway',))}")
    assert auth.source(call_from(None, True, ("x-forwarded-client", "203.0.113.7"), proof)) == "127.0.0.1"
