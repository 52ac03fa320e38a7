"""The parts mTLS is built from, each against a real Consul agent: the Connect CA client, the
intention cache, the workload identity following a rotation, and the server's gate.

tests/integration/mesh/test_mtls.py proves the whole; these pin what each part promises on
its own, so a break shows up next to its cause.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.config import ServerSettings
from mesh.connect.ca import ConnectCA, ConnectUnavailable
from mesh.connect.guard import IntentionGuard
from mesh.connect.intentions import IntentionAuthorizer
from mesh.connect.settings import SecuritySettings
from mesh.connect.setup import ConnectedWorkload, connect_workload
from mesh.connect.spiffe import SpiffeId
from mesh.connect.workload import Bundle, WorkloadIdentity
from mesh.registry.dev_agent import ConsulDevAgent, find_consul
from mesh.server import MeshServer
from tests.support.connect import own_ca, set_intention, trust_domain, use_ca
from tests.support.processes import ROOT
from tests.support.waiting import wait_until

# After a root rotation the agent re-issues each leaf at a random moment within 30 s (Consul
# spreads the signing load), so a test waiting for the new leaf allows that and a margin.
LEAF_REISSUE_SECONDS = 40


@pytest.fixture
async def ca(consul_agent: ConsulDevAgent) -> AsyncIterator[ConnectCA]:
    client = ConnectCA(consul_agent.http_addr)  # the agent is ready only once its CA has roots
    try:
        yield client
    finally:
        await client.close()


def uri_of(agent: ConsulDevAgent, service: str) -> str:
    return SpiffeId(trust_domain(agent), "default", "dc1", service).uri


async def test_leaf_and_roots_blocking_queries_wake_on_a_ca_rotation(
    consul_agent: ConsulDevAgent, ca: ConnectCA
) -> None:
    roots_index, roots = await ca.roots()
    leaf_index, leaf = await ca.leaf("order")
    assert roots.count == 1 and leaf.service == "order" and leaf.uri == uri_of(consul_agent, "order")
    new_roots = asyncio.create_task(ca.roots(index=roots_index, wait=20))
    new_leaf = asyncio.create_task(ca.leaf("order", index=leaf_index, wait=LEAF_REISSUE_SECONDS))
    await asyncio.sleep(0)
    use_ca(consul_agent, own_ca(roots.trust_domain))
    async with asyncio.timeout(LEAF_REISSUE_SECONDS + 5):
        (_, rotated), (_, reissued) = await asyncio.gather(new_roots, new_leaf)
    assert rotated.count == 2 and rotated.trust_domain == roots.trust_domain
    assert reissued.serial != leaf.serial and reissued.uri == leaf.uri


async def test_a_token_that_may_not_have_the_name_is_refused_with_what_to_do(tmp_path: Path) -> None:
    agent = ConsulDevAgent(find_consul(ROOT), tmp_path / "consul.log", acls=True).start()
    ca = ConnectCA(agent.http_addr, token="")
    try:
        with pytest.raises(ConnectUnavailable) as refused:
            await ca.leaf("order")
        message = str(refused.value)
        assert "refused the ACL token (403" in message
        assert "CONSUL_HTTP_TOKEN" in message and "'order'" in message
        assert agent.master_token not in message
    finally:
        await ca.close()
        agent.stop()


async def test_a_workload_refuses_to_start_at_once_when_connect_is_off(tmp_path: Path) -> None:
    agent = ConsulDevAgent(find_consul(ROOT), tmp_path / "consul.log", connect=False).start()
    try:
        async with asyncio.timeout(10):  # refused at once, not retried for start_within
            with pytest.raises(ConnectUnavailable) as refused:
                await connect_workload("order", agent.http_addr, SecuritySettings(), start_within=30)
        message = str(refused.value)
        assert "no certificate for 'order'" in message
        assert "Connect is not enabled on the Consul agent at" in message
        assert "connect { enabled = true }" in message
    finally:
        agent.stop()


async def test_the_authorizer_answers_from_intentions_caches_and_forgets_on_a_change(
    consul_agent: ConsulDevAgent, ca: ConnectCA
) -> None:
    order, shipping = uri_of(consul_agent, "order"), uri_of(consul_agent, "shipping")
    strict = await IntentionAuthorizer(ca, "inventory", default_allow=False).start()
    lenient = await IntentionAuthorizer(ca, "inventory", default_allow=True).start()
    try:
        # No intention at all: each process's own setting decides, not the agent's default.
        denied, allowed = await strict.check(order, "01"), await lenient.check(order, "01")
        assert (denied.allowed, denied.matched) == (False, False)
        assert denied.reason == "no intention matches (denied by default)"
        assert (allowed.allowed, allowed.matched) == (True, False)

        set_intention(consul_agent, "order", "inventory", "allow")
        await wait_until(lambda: strict.cached(order) is None, 2, "the cache dropped on the change")
        answer = await strict.check(order, "01")
        assert answer.allowed and answer.matched and answer.reason.startswith("Matched intention")
        assert strict.cached(order) == answer  # the next call needs no question to the agent
        assert not (await strict.check(shipping, "02")).allowed  # only the source it names

        set_intention(consul_agent, "order", "inventory", "deny")
        await wait_until(lambda: strict.cached(order) is None, 2, "the cache dropped on the change")
        denied_now = await strict.check(order, "01")
        assert not denied_now.allowed and denied_now.matched
    finally:
        await strict.close()
        await lenient.close()


async def test_the_callers_intentions_name_are_asked_about_at_start(
    consul_agent: ConsulDevAgent, ca: ConnectCA
) -> None:
    order, gateway = uri_of(consul_agent, "order"), uri_of(consul_agent, "gateway")
    set_intention(consul_agent, "order", "inventory", "allow")
    set_intention(consul_agent, "gateway", "inventory", "deny")
    set_intention(consul_agent, "order", "shipping", "allow")  # another destination: not asked
    prefix = order.rsplit("/", 1)[0]
    authorizer = IntentionAuthorizer(
        ca, "inventory", default_allow=False, peer_uri=lambda name: f"{prefix}/{name}"
    )
    await authorizer.start()
    try:
        # the real agent answers a question without a certificate serial, before any call
        warmed_order, warmed_gateway = authorizer.cached(order), authorizer.cached(gateway)
        assert warmed_order is not None and warmed_order.allowed and warmed_order.matched
        assert warmed_gateway is not None and not warmed_gateway.allowed and warmed_gateway.matched
        assert await ca.intention_sources("inventory") == ["gateway", "order"]
    finally:
        await authorizer.close()


async def test_the_identity_tells_its_subscribers_of_a_rotation(consul_agent: ConsulDevAgent) -> None:
    identity = await WorkloadIdentity("order", ConnectCA(consul_agent.http_addr), wait=30).start(20)
    seen: list[Bundle] = []
    unsubscribe = identity.subscribe(seen.append)
    try:
        before = identity.bundle
        assert before.leaf.uri == uri_of(consul_agent, "order")
        use_ca(consul_agent, own_ca(before.trust_domain))
        await wait_until(
            lambda: identity.bundle.roots.count == 2 and identity.bundle.leaf.serial != before.leaf.serial,
            LEAF_REISSUE_SECONDS,
            "a new root and a re-issued leaf",
        )
        assert seen and seen[-1] is identity.bundle
        unsubscribe()
        count = len(seen)
        set_intention(consul_agent, "x", "y", "allow")  # unrelated: no renewal, nobody told
        assert len(seen) == count
    finally:
        await identity.close()


async def test_the_gate_refuses_another_trust_domain_even_chained_to_a_trusted_root(
    consul_agent: ConsulDevAgent, ca: ConnectCA
) -> None:
    domain = trust_domain(consul_agent)
    ours = own_ca(domain)
    use_ca(consul_agent, ours)  # the agent (and so the server) trusts our root
    identity = await WorkloadIdentity("inventory", ConnectCA(consul_agent.http_addr), wait=20).start(20)
    # Allow by default: only the trust domain can refuse the stranger below.
    authorizer = await IntentionAuthorizer(ca, "inventory", default_allow=True).start()
    workload = ConnectedWorkload(identity, authorizer, IntentionGuard(identity, authorizer))
    await wait_until(lambda: ours.cert_pem.strip() in identity.bundle.roots.pem, 20, "our root trusted")
    server = MeshServer(ServerSettings("inventory", 0, grace_seconds=0), [], security=workload)
    await server.start()
    now = datetime.datetime.now(datetime.UTC)
    window = {
        "not_before": now - datetime.timedelta(minutes=1),
        "not_after": now + datetime.timedelta(hours=1),
    }
    server_name = identity.bundle.server_name("inventory")

    async def check_as(uri: str) -> grpc.StatusCode:
        cert, key = ours.leaf(uri, "client", **window)
        credentials = grpc.ssl_channel_credentials(
            identity.bundle.roots.pem.encode(), key.encode(), cert.encode()
        )
        options = [("grpc.ssl_target_name_override", server_name)]
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{server.port}", credentials, options=options
        ) as channel:
            try:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.aio.AioRpcError as error:
                assert "trust domain 'elsewhere.consul'" in (error.details() or "")
                return error.code()
            return grpc.StatusCode.OK

    try:
        assert await check_as(f"spiffe://{domain}/ns/default/dc/dc1/svc/order") == grpc.StatusCode.OK
        stranger = "spiffe://elsewhere.consul/ns/default/dc/dc1/svc/order"
        assert await check_as(stranger) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop(0)
        await workload.close()
