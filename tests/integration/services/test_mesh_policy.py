"""The shop's mesh policy applied to a real Consul 1.8.7 dev agent with ACLs on (default deny):
one token per identity in a 0600 file, good for its own name only, and the agent's answers to
``/v1/agent/connect/authorize`` following the shop's intentions.
"""

from __future__ import annotations

import asyncio
import json
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.errors import RegistryUnavailable
from mesh.registry.acl import ConsulAcl
from mesh.registry.base import ServiceInstance
from mesh.registry.consul import ConsulRegistrar
from mesh.registry.consul_api import ConsulApi
from mesh.registry.dev_agent import ConsulDevAgent, find_consul
from services.mesh_policy import IDENTITIES, SERVICES, SHOP, apply, token_secret
from tests.support.health import health_port as health_port  # the fixture
from tests.support.processes import ROOT, free_port


@pytest.fixture
def acl_agent(tmp_path: Path) -> Iterator[ConsulDevAgent]:
    agent = ConsulDevAgent(find_consul(ROOT), tmp_path / "consul.log", acls=True).start()
    try:
        yield agent
    finally:
        agent.stop()


def status_of(agent: ConsulDevAgent, method: str, path: str, token: str, body: object = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(agent.http_addr + path, data=data, method=method)
    if token:
        request.add_header("X-Consul-Token", token)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def authorized(agent: ConsulDevAgent, token: str, source: str, target: str) -> bool:
    """The agent's answer to "may ``source`` call ``target``?", asked with ``token``."""
    roots = agent.get("/v1/agent/connect/ca/roots")
    assert isinstance(roots, dict)
    body = {
        "Target": target,
        "ClientCertURI": f"spiffe://{roots['TrustDomain']}/ns/default/dc/dc1/svc/{source}",
        "ClientCertSerial": "01",
    }
    request = urllib.request.Request(
        agent.http_addr + "/v1/agent/connect/authorize",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"X-Consul-Token": token},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return bool(json.loads(reply.read())["Authorized"])


def test_the_shop_policy_names_every_identity_and_the_calls_the_shop_makes() -> None:
    assert IDENTITIES == (
        "user",
        "order",
        "payment",
        "inventory",
        "shipping",
        "gateway",
        "cli",
        "xds",
        "dashboard",
    )
    assert SHOP.deny == (("*", "*"),)
    assert {d for s, d in SHOP.allow if s == "order"} == {"inventory", "payment", "shipping", "user"}
    assert {d for s, d in SHOP.allow if s == "gateway"} == set(SERVICES)
    assert {d for s, d in SHOP.allow if s == "cli"} == set(SERVICES)
    assert {s for s, _ in SHOP.allow} == {"order", "gateway", "cli"}
    assert not SHOP.allows("payment", "order") and not SHOP.allows("inventory", "payment")


def test_apply_writes_one_0600_token_per_identity_good_for_its_own_name_only(
    acl_agent: ConsulDevAgent, tmp_path: Path
) -> None:
    directory = tmp_path / "tokens"
    paths = apply(acl_agent.http_addr, acl_agent.master_token, directory)

    assert set(paths) == set(IDENTITIES)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    tokens = {}
    for identity, path in paths.items():
        assert path == directory / identity
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        tokens[identity] = path.read_text().strip()
        assert tokens[identity] != acl_agent.master_token
    assert sorted(p.name for p in directory.iterdir()) == sorted(IDENTITIES)  # no drafts left behind
    assert len(set(tokens.values())) == len(IDENTITIES)

    for identity, token in tokens.items():
        other = "payment" if identity != "payment" else "order"
        assert status_of(acl_agent, "GET", f"/v1/agent/connect/ca/leaf/{identity}", token) == 200
        assert status_of(acl_agent, "GET", f"/v1/agent/connect/ca/leaf/{other}", token) == 403
        registration = {"Name": other, "ID": f"{other}-rogue", "Port": 1}
        assert status_of(acl_agent, "PUT", "/v1/agent/service/register", token, registration) == 403
    assert status_of(acl_agent, "GET", "/v1/agent/connect/ca/leaf/order", "") == 403  # anonymous


def test_the_agent_authorizes_exactly_the_calls_the_shop_makes(
    acl_agent: ConsulDevAgent, tmp_path: Path
) -> None:
    paths = apply(acl_agent.http_addr, acl_agent.master_token, tmp_path / "tokens")
    tokens = {identity: path.read_text().strip() for identity, path in paths.items()}

    intentions = ConsulAcl(acl_agent.http_addr, acl_agent.master_token).intentions()
    assert {(i.source, i.destination, i.action) for i in intentions} == {
        *((s, d, "allow") for s, d in SHOP.allow),
        ("*", "*", "deny"),
    }
    # Each service asks about calls to itself, with its own token (service:write on the target).
    assert authorized(acl_agent, tokens["payment"], "order", "payment")
    assert not authorized(acl_agent, tokens["order"], "payment", "order")
    assert not authorized(acl_agent, tokens["payment"], "inventory", "payment")
    assert authorized(acl_agent, tokens["user"], "gateway", "user")
    assert authorized(acl_agent, tokens["shipping"], "cli", "shipping")
    assert not authorized(acl_agent, tokens["order"], "rogue", "order")
    # A token may not ask about another service's callers.
    body = {"Target": "payment", "ClientCertURI": "spiffe://x.consul/ns/default/dc/dc1/svc/order"}
    assert status_of(acl_agent, "POST", "/v1/agent/connect/authorize", tokens["order"], body) == 403
    # Every pair, asked with the master token: the agent agrees with the policy as data.
    for source in (*IDENTITIES, "rogue"):
        for target in IDENTITIES:
            answer = authorized(acl_agent, acl_agent.master_token, source, target)
            assert answer == SHOP.allows(source, target), (source, target)


def test_apply_again_keeps_the_secrets_and_restores_them_after_an_agent_restart(
    acl_agent: ConsulDevAgent, tmp_path: Path
) -> None:
    directory = tmp_path / "tokens"
    first = {
        i: p.read_text() for i, p in apply(acl_agent.http_addr, acl_agent.master_token, directory).items()
    }
    again = {
        i: p.read_text() for i, p in apply(acl_agent.http_addr, acl_agent.master_token, directory).items()
    }
    assert again == first
    assert len(ConsulAcl(acl_agent.http_addr, acl_agent.master_token).intentions()) == len(SHOP.allow) + 1

    acl_agent.stop()
    acl_agent.start()  # a dev agent forgets every token: the launcher applies the policy again
    order = first["order"].strip()
    assert status_of(acl_agent, "GET", "/v1/agent/connect/ca/leaf/order", order) == 403
    restored = {
        i: p.read_text() for i, p in apply(acl_agent.http_addr, acl_agent.master_token, directory).items()
    }
    assert restored == first
    assert status_of(acl_agent, "GET", "/v1/agent/connect/ca/leaf/order", order) == 200


def test_a_token_file_keeps_its_secret_and_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "order"
    secret = token_secret(path)
    assert token_secret(path) == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    assert token_secret(path) == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def passing_ports(api: ConsulApi, name: str, want: list[int], within: float) -> list[int]:
    """Follow ``name``'s passing instances with blocking queries until their ports are ``want``."""
    deadline = time.monotonic() + within
    index: str | None = None
    ports: list[int] = []
    while time.monotonic() < deadline:
        index, entries = await api.health(name, index=index, wait=1.0)
        ports = sorted(entry.instance.port for entry in entries)
        if ports == want:
            return ports
    return ports


async def test_the_mesh_registrar_and_discovery_work_with_the_policy_tokens_and_survive_an_agent_restart(
    acl_agent: ConsulDevAgent, tmp_path: Path, health_port: int
) -> None:
    directory = tmp_path / "tokens"
    paths = apply(acl_agent.http_addr, acl_agent.master_token, directory)
    tokens = {identity: path.read_text().strip() for identity, path in paths.items()}
    instance = ServiceInstance(f"order-127.0.0.1-{health_port}", "order", "127.0.0.1", health_port)
    registrar = ConsulRegistrar(
        acl_agent.http_addr, token=tokens["order"], resync_interval=0.2, propagation_delay=0
    )
    rogue = ConsulRegistrar(acl_agent.http_addr, token=tokens["payment"], propagation_delay=0)
    payment_view = ConsulApi(acl_agent.http_addr, token=tokens["payment"])
    anonymous = ConsulApi(acl_agent.http_addr)
    try:
        await registrar.register(instance)
        with pytest.raises(RegistryUnavailable, match="Missing service:write on order"):
            await rogue.register(ServiceInstance("order-rogue", "order", "127.0.0.1", free_port()))
        assert await passing_ports(payment_view, "order", [health_port], 20) == [health_port]
        assert (await anonymous.health("order"))[1] == []  # default deny: anonymous sees nothing

        # The launcher's restart of its agent: everything forgotten, the policy applied again
        # with the same secrets, and the registrar's anti-entropy registers the instance again.
        await asyncio.to_thread(acl_agent.stop)
        await asyncio.to_thread(acl_agent.start)
        again = await asyncio.to_thread(apply, acl_agent.http_addr, acl_agent.master_token, directory)
        assert {i: p.read_text().strip() for i, p in again.items()} == tokens
        assert await passing_ports(payment_view, "order", [health_port], 20) == [health_port]
    finally:
        await registrar.on_stopping()
        await rogue.on_stopping()
        await payment_view.close()
        await anonymous.close()
    assert acl_agent.passing("order") == []
