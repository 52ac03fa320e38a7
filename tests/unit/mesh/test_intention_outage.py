"""Intentions while Consul cannot answer: the last known answer stands, nothing becomes UNKNOWN.

Seen on a 3-server cluster whose leader was SIGKILLed: the servers' intentions watch woke with a
new index after the election and dropped their cached answers; the agent, still reconnecting,
answered ``/v1/agent/connect/authorize`` with 500 ("rpc error making call: EOF"), and every
call to those servers failed as UNKNOWN "Unexpected ConnectUnavailable" for a few seconds.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from mesh.connect.ca import Authorization, ConnectUnavailable
from mesh.connect.guard import IntentionGuard
from mesh.connect.intentions import IntentionAuthorizer
from mesh.connect.peer import PEER_URI

GATEWAY = "spiffe://1111.consul/ns/default/dc/dc1/svc/gateway"
ORDER = "spiffe://1111.consul/ns/default/dc/dc1/svc/order"


class FlakyCA:
    """The agent: answers from ``allowed`` until ``down`` is set, then fails like a leaderless one."""

    def __init__(self) -> None:
        self.allowed = {GATEWAY: True, ORDER: False}
        self.down = False
        self.asked = 0

    async def authorize(self, target: str, client_uri: str, client_serial: str) -> Authorization:
        self.asked += 1
        if self.down:
            raise ConnectUnavailable("the Consul agent answered 500: rpc error making call: EOF")
        allowed = self.allowed[client_uri]
        return Authorization(allowed, f"Matched intention: {'allow' if allowed else 'deny'}", True)

    async def intentions_index(self, *, index: str | None = None, wait: float = 0.0) -> str:
        await asyncio.sleep(3600 if index else 0)
        return "1"


def authorizer(ca: FlakyCA) -> IntentionAuthorizer:
    return IntentionAuthorizer(ca, "inventory", default_allow=False)  # type: ignore[arg-type]


async def test_after_an_invalidation_an_agent_that_cannot_answer_leaves_the_last_answer_standing() -> None:
    ca = FlakyCA()
    gate = authorizer(ca)
    assert (await gate.check(GATEWAY, "01")).allowed
    assert not (await gate.check(ORDER, "02")).allowed
    gate.invalidate()  # an intentions watch woke (a new leader's index)
    ca.down = True
    assert (await gate.check(GATEWAY, "01")).allowed  # was: ConnectUnavailable
    assert not (await gate.check(ORDER, "02")).allowed  # a denial stands just as well
    assert gate.cached(GATEWAY) is None  # not cached as fresh: the agent is asked again next time
    ca.down = False
    ca.allowed[GATEWAY] = False  # the intention really changed meanwhile
    assert not (await gate.check(GATEWAY, "01")).allowed


async def test_a_caller_never_answered_before_still_fails_when_the_agent_cannot_answer() -> None:
    ca = FlakyCA()
    ca.down = True
    with pytest.raises(ConnectUnavailable):
        await authorizer(ca).check(GATEWAY, "01")


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class Context:
    def __init__(self, uri: str) -> None:
        self._uri = uri

    def auth_context(self) -> dict[str, list[bytes]]:
        return {PEER_URI: [self._uri.encode()]}

    async def abort(self, code: grpc.StatusCode, details: str) -> Any:
        raise Aborted(code, details)


async def test_the_gate_answers_unavailable_naming_consul_when_it_cannot_ask() -> None:
    ca = FlakyCA()
    ca.down = True

    class Identity:
        class bundle:  # the shape the guard reads
            trust_domain = "1111.consul"

    guard = IntentionGuard(Identity(), authorizer(ca))  # type: ignore[arg-type]
    with pytest.raises(Aborted) as refused:
        await guard.admit(Context(GATEWAY))
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE  # was: UNKNOWN, from an escaped error
    assert "consul connect is unavailable" in refused.value.details


class ListingCA(FlakyCA):
    """Also lists intentions: gateway -> inventory (allow), order -> inventory (deny), * -> *."""

    async def intention_sources(self, target: str) -> list[str]:
        if self.down:
            raise ConnectUnavailable("the Consul agent answered 500: No cluster leader")
        return ["gateway", "order"]


def uri(name: str) -> str:
    return f"spiffe://1111.consul/ns/default/dc/dc1/svc/{name}"


async def test_the_callers_intentions_name_are_answered_before_their_first_call() -> None:
    ca = ListingCA()
    gate = IntentionAuthorizer(ca, "inventory", default_allow=False, peer_uri=uri)  # type: ignore[arg-type]
    await gate.start()
    try:
        assert gate.cached(GATEWAY) is not None and gate.cached(GATEWAY).allowed  # type: ignore[union-attr]
        assert gate.cached(ORDER) is not None and not gate.cached(ORDER).allowed  # type: ignore[union-attr]
        asked = ca.asked
        gate.invalidate()
        ca.down = True  # a first call after the election: still answered, allow and deny alike
        assert (await gate.check(GATEWAY, "01")).allowed and not (await gate.check(ORDER, "02")).allowed
        assert ca.asked == asked + 2
    finally:
        await gate.close()


async def test_an_agent_down_at_start_only_postpones_the_questions() -> None:
    ca = ListingCA()
    ca.down = True
    gate = IntentionAuthorizer(ca, "inventory", default_allow=False, peer_uri=uri)  # type: ignore[arg-type]
    await gate.start()  # does not fail: the calls will ask
    try:
        assert gate.cached(GATEWAY) is None
        ca.down = False
        assert (await gate.check(GATEWAY, "01")).allowed
    finally:
        await gate.close()
