"""The login throttle's rules against a fake clock, and how a refusal reaches HTTP."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf import any_pb2
from google.rpc import status_pb2

from gateway.errors import retry_after
from gateway.headers import inbound
from mesh.errors import ConfigError
from mesh.identity import jwt_settings_from_env
from mesh.verifier import JwtVerifier
from services.common.auth import Authenticator, peer_source, source_address
from services.user.settings import login_limits_from_env
from services.user.throttle import LoginLimits, LoginThrottle, LoginThrottled
from tests.support.tokens import KeyPair


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock, **limits: Any) -> LoginThrottle:
    return LoginThrottle(LoginLimits(**limits), clock)


def refusal(check: LoginThrottle, source: str, account: str) -> LoginThrottled:
    with pytest.raises(LoginThrottled) as caught:
        check.admit(source, account)
    return caught.value


def test_the_account_backoff_doubles_is_capped_and_a_success_resets_it() -> None:
    clock = Clock()
    check = throttle(clock, account_free_failures=2, account_backoff_seconds=1, account_backoff_max_seconds=5)
    delays = []
    for index in range(6):
        check.admit(f"10.0.0.{index}", "ada")  # every source is new: only the account counts
        check.failed(f"10.0.0.{index}", "ada")
        if index >= 1:
            delays.append(refusal(check, "10.9.9.9", "ada").retry_after)
            clock.now += delays[-1]
    assert delays == [1, 2, 4, 5, 5]
    check.failed("10.9.9.9", "ada")
    assert refusal(check, "10.9.9.9", "ada").scope == "account"
    check.admit("10.9.9.9", "bob")  # another account is free
    check.succeeded("ada")
    check.admit("10.9.9.9", "ada")
    check.failed("10.9.9.9", "ada")
    check.admit("10.9.9.9", "ada")  # one failure after the reset: within the free ones again


def test_a_source_may_fail_its_burst_then_waits_for_the_refill() -> None:
    clock = Clock()
    check = throttle(clock, source_burst=3, source_per_second=0.5, account_free_failures=100)
    for index in range(3):
        check.admit("10.0.0.1", f"user{index}")
        check.failed("10.0.0.1", f"user{index}")
    refused = refusal(check, "10.0.0.1", "someone")
    assert refused.scope == "source" and refused.retry_after == pytest.approx(2.0)
    check.admit("10.0.0.2", "someone")  # another source is untouched
    clock.now += 2.0
    check.admit("10.0.0.1", "someone")


def test_successful_logins_cost_a_source_nothing() -> None:
    check = throttle(Clock(), source_burst=1)
    for _ in range(50):
        check.admit("10.0.0.1", "ada")
        check.succeeded("ada")


def test_state_is_bounded_and_forgotten_once_it_restricts_nothing() -> None:
    clock = Clock()
    check = throttle(clock, max_tracked=10, account_backoff_max_seconds=5)
    for index in range(100):
        check.failed(f"10.0.{index}.1", f"user{index}")
    assert check.tracked() == (10, 10)
    clock.now += 3600
    for index in range(90, 100):
        check.admit(f"10.0.{index}.1", f"user{index}")
    assert check.tracked() == (0, 0)


async def test_one_source_holds_a_bounded_share_of_the_hashing_pool() -> None:
    check = throttle(Clock(), hash_share=1, hash_queue=1)
    release = asyncio.Event()
    holding = asyncio.Event()

    async def hash_for(source: str) -> None:
        async with check.hashing_turn(source):
            holding.set()
            await release.wait()

    first = asyncio.create_task(hash_for("10.0.0.1"))
    await holding.wait()
    queued = asyncio.create_task(hash_for("10.0.0.1"))
    await asyncio.sleep(0)
    with pytest.raises(LoginThrottled) as caught:
        async with check.hashing_turn("10.0.0.1"):
            pass
    assert caught.value.scope == "hashing"
    async with asyncio.timeout(5):  # another source gets its turn while the first one's are busy
        async with check.hashing_turn("10.0.0.2"):
            pass
    release.set()
    await asyncio.gather(first, queued)


def test_a_refusal_carries_retry_info_that_the_gateway_turns_into_retry_after() -> None:
    refused = LoginThrottled("account", 2.2)
    packed = []
    for detail in refused.details():
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    assert retry_after(status_pb2.Status(code=8, details=packed)) == [("retry-after", "3")]
    assert retry_after(status_pb2.Status(code=8)) == []


def test_limits_are_read_from_the_environment_and_checked() -> None:
    limits = login_limits_from_env({"USER_LOGIN_SOURCE_BURST": "7", "USER_LOGIN_HASH_SHARE": "2"})
    assert limits.source_burst == 7 and limits.hash_share == 2
    with pytest.raises(ConfigError, match="USER_LOGIN_SOURCE_PER_SECOND"):
        login_limits_from_env({"USER_LOGIN_SOURCE_PER_SECOND": "0"})


@dataclass
class FakeContext:
    metadata: tuple[tuple[str, str], ...]
    address: str = "ipv4:127.0.0.1:40000"

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def peer(self) -> str:
        return self.address


def test_sources_are_addresses_and_an_ipv6_client_is_its_64() -> None:
    assert peer_source("ipv4:127.0.0.1:40000") == "127.0.0.1"
    assert peer_source("ipv6:[2001:db8::1]:40000") == "2001:db8::/64"
    assert peer_source("ipv6:[::ffff:10.0.0.1]:40000") == "10.0.0.1"
    assert peer_source("unix:/tmp/socket") == "unix:/tmp/socket"
    assert source_address("not an address") is None


def test_only_the_gateways_identity_makes_a_forwarded_address_believed(jwt_keys: KeyPair) -> None:
    """The user service's view (plaintext mode); every rule in both modes: tests/unit/services/test_auth.py."""
    verifier = JwtVerifier(jwt_settings_from_env(jwt_keys.env("user")))
    auth = Authenticator(verifier, insecure=True, trusted_callers=("order",))
    context: Any = FakeContext(jwt_keys.gateway_metadata("203.0.113.7"))
    assert auth.source(context) == "203.0.113.7"
    spoofed: Any = FakeContext((("x-forwarded-client", "203.0.113.7"),))
    assert auth.source(spoofed) == "127.0.0.1"
    other: Any = FakeContext((("x-forwarded-client", "203.0.113.7"), *jwt_keys.service_metadata("order")))
    assert auth.source(other) == "127.0.0.1"
    twice: Any = FakeContext(
        (*jwt_keys.gateway_metadata("203.0.113.7"), ("x-forwarded-client", "198.51.100.1"))
    )
    assert auth.source(twice) == "127.0.0.1"


def test_a_client_cannot_send_the_forwarding_keys_through_the_gateway() -> None:
    from gateway.errors import GatewayError

    for key in ("x-forwarded-client", "x-mesh-peer"):
        with pytest.raises(GatewayError):
            inbound([(f"grpc-metadata-{key}", "10.0.0.1")], 10.0, 60.0)
