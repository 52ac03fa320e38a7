"""Consul with ACLs on and default deny: a workload token may register, and fetch a certificate
for, its own name only; anonymous requests get nothing. A real 1.8.7 dev agent in ACL mode
(``ConsulDevAgent(acls=True)``), a real gRPC health server for the checks, urllib for requests.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from mesh.registry.acl import ConsulAcl, ConsulAclError, service_policy_rules
from mesh.registry.dev_agent import ConsulDevAgent
from tests.support.health import health_port as health_port  # the fixture
from tests.support.processes import free_port

POLL_SECONDS = 0.05


def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``predicate`` until true (a blocking query inside it may do the waiting)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what}")
        time.sleep(POLL_SECONDS)  # poll interval


def request(
    agent: ConsulDevAgent, method: str, path: str, token: str = "", body: object = None
) -> tuple[int, object]:
    """(status, JSON or text answer) of one request to the agent with ``token`` (none: anonymous)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(agent.http_addr + path, data=data, method=method)
    if token:
        req.add_header("X-Consul-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=10) as reply:
            raw = reply.read()
            return reply.status, json.loads(raw) if raw.strip() else None
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def register(agent: ConsulDevAgent, token: str, name: str, port: int) -> tuple[int, object]:
    """Register ``name`` on ``port`` with a gRPC health check, as the mesh's registrar does."""
    return request(
        agent,
        "PUT",
        "/v1/agent/service/register",
        token,
        {
            "Name": name,
            "ID": f"{name}-127.0.0.1-{port}",
            "Address": "127.0.0.1",
            "Port": port,
            "Check": {"GRPC": f"127.0.0.1:{port}", "Interval": "1s", "Timeout": "1s"},
        },
    )


@pytest.fixture
def acl_agent(consul_path: str, tmp_path: Path) -> Iterator[ConsulDevAgent]:
    agent = ConsulDevAgent(consul_path, tmp_path / "consul.log", acls=True).start()
    try:
        yield agent
    finally:
        agent.stop()


def workload_token(agent: ConsulDevAgent, name: str) -> str:
    acl = ConsulAcl(agent.http_addr, agent.master_token)
    acl.create_policy(f"test-{name}", service_policy_rules(name))
    return acl.create_token(f"test-{name}", f"test workload {name}")


def test_the_rules_grant_write_on_the_own_name_and_read_on_services_and_nodes() -> None:
    assert service_policy_rules("order").splitlines() == [
        'service "order" { policy = "write" }',
        'service_prefix "" { policy = "read" }',
        'node_prefix "" { policy = "read" }',
    ]
    for bad in ("", 'order" { policy = "write" } service_prefix "', "a b", "*"):
        with pytest.raises(ValueError):
            service_policy_rules(bad)


def test_an_acl_agent_denies_anonymous_requests_and_keeps_its_master_token_out_of_sight(
    acl_agent: ConsulDevAgent,
) -> None:
    master = acl_agent.master_token
    assert uuid.UUID(master)  # generated, a UUID as Consul wants
    assert master not in repr(acl_agent)
    assert acl_agent.process is not None
    assert master.encode() not in Path(f"/proc/{acl_agent.process.pid}/cmdline").read_bytes()  # not in ps
    leftovers = Path(tempfile.gettempdir()).glob("consul-acl-*.json")
    assert not [p for p in leftovers if master in p.read_text(errors="replace")]  # config file removed
    assert master not in acl_agent.logs()

    assert request(acl_agent, "GET", "/v1/agent/connect/ca/leaf/order")[0] == 403
    assert request(acl_agent, "GET", "/v1/catalog/services") == (200, {})  # filtered: sees nothing
    assert request(acl_agent, "GET", "/v1/catalog/services", master) == (200, {"consul": []})
    assert ConsulAcl(acl_agent.http_addr).acl_enabled()
    assert not ConsulAcl(acl_agent.http_addr).token_works()
    assert ConsulAcl(acl_agent.http_addr, master).token_works()

    # The agent's own token (the master) lets its anti-entropy update its node: the tagged
    # addresses appear (with no agent token they never do: "Node info update blocked by ACLs").
    def node_synced() -> bool:
        nodes = acl_agent.get("/v1/catalog/nodes")
        assert isinstance(nodes, list) and len(nodes) == 1
        return bool(nodes[0]["TaggedAddresses"])

    wait_until(node_synced, 20, "the dev agent's node info synced under default deny")
    assert "blocked by ACLs" not in acl_agent.logs()


def test_the_agent_does_not_inherit_its_starters_consul_token(
    consul_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "the-operators-token")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", str(tmp_path / "operator-token"))
    agent = ConsulDevAgent(consul_path, tmp_path / "consul.log", acls=True).start()
    try:
        assert agent.process is not None
        environ = Path(f"/proc/{agent.process.pid}/environ").read_bytes().split(b"\0")
        assert not [v for v in environ if v.startswith(b"CONSUL_HTTP_TOKEN")]
    finally:
        agent.stop()


def test_a_plain_agent_reports_acls_disabled(consul: ConsulDevAgent) -> None:
    assert not consul.acls and consul.master_token == ""
    assert not ConsulAcl(consul.http_addr).acl_enabled()
    assert request(consul, "GET", "/v1/agent/connect/ca/leaf/anything")[0] == 200  # why ACLs matter


def test_a_workload_token_registers_and_gets_a_certificate_for_its_own_name_only(
    acl_agent: ConsulDevAgent, health_port: int
) -> None:
    order, payment = workload_token(acl_agent, "order"), workload_token(acl_agent, "payment")

    assert register(acl_agent, order, "order", health_port) == (200, None)
    # Another workload discovers it, passing, through a blocking health query with its own token.
    index = 0

    def passing() -> bool:
        nonlocal index
        req = urllib.request.Request(
            f"{acl_agent.http_addr}/v1/health/service/order?passing=1&index={index}&wait=2s",
            headers={"X-Consul-Token": payment},
        )
        with urllib.request.urlopen(req, timeout=10) as reply:
            index = int(reply.headers["X-Consul-Index"])
            return [row["Service"]["Port"] for row in json.loads(reply.read())] == [health_port]

    wait_until(passing, 20, "order passing, seen with payment's token")
    assert request(acl_agent, "GET", "/v1/health/service/order?passing=1")[1] == []  # anonymous: nothing

    status, leaf = request(acl_agent, "GET", "/v1/agent/connect/ca/leaf/order", order)
    assert status == 200 and isinstance(leaf, dict) and leaf["Service"] == "order"
    cert = x509.load_pem_x509_certificate(leaf["CertPEM"].encode())
    [uri] = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uri.endswith("/svc/order")

    assert request(acl_agent, "GET", "/v1/agent/connect/ca/leaf/payment", order)[0] == 403
    assert request(acl_agent, "GET", "/v1/agent/connect/ca/leaf/order")[0] == 403  # anonymous
    status, said = register(acl_agent, order, "payment", health_port)
    assert status == 403 and "Missing service:write on payment" in str(said)
    assert request(acl_agent, "GET", "/v1/agent/connect/ca/roots")[0] == 200  # roots are public

    # authorize: only about calls to itself.
    roots = acl_agent.get("/v1/agent/connect/ca/roots")
    assert isinstance(roots, dict)
    asked = {"ClientCertURI": f"spiffe://{roots['TrustDomain']}/ns/default/dc/dc1/svc/payment"}
    status, answer = request(
        acl_agent, "POST", "/v1/agent/connect/authorize", order, {**asked, "Target": "order"}
    )
    assert status == 200 and isinstance(answer, dict) and answer["Authorized"] is False  # default deny
    assert (
        request(acl_agent, "POST", "/v1/agent/connect/authorize", order, {**asked, "Target": "payment"})[0]
        == 403
    )

    assert (
        request(acl_agent, "PUT", f"/v1/agent/service/deregister/order-127.0.0.1-{health_port}", payment)[0]
        == 403
    )
    assert (
        request(acl_agent, "PUT", f"/v1/agent/service/deregister/order-127.0.0.1-{health_port}", order)[0]
        == 200
    )
    assert acl_agent.passing("order") == []


def test_a_workload_follows_intentions_with_a_blocking_query_but_cannot_change_them(
    acl_agent: ConsulDevAgent,
) -> None:
    acl = ConsulAcl(acl_agent.http_addr, acl_agent.master_token)
    order = workload_token(acl_agent, "order")
    acl.set_intention("*", "*", "deny")
    req = urllib.request.Request(
        f"{acl_agent.http_addr}/v1/connect/intentions", headers={"X-Consul-Token": order}
    )
    with urllib.request.urlopen(req, timeout=10) as reply:
        index = int(reply.headers["X-Consul-Index"])
        assert [(i["SourceName"], i["DestinationName"]) for i in json.loads(reply.read())] == [("*", "*")]

    answered: list[tuple[float, list[tuple[str, str]]]] = []

    def block() -> None:
        started = time.monotonic()
        blocking = urllib.request.Request(
            f"{acl_agent.http_addr}/v1/connect/intentions?index={index}&wait=30s",
            headers={"X-Consul-Token": order},
        )
        with urllib.request.urlopen(blocking, timeout=40) as reply:
            rows = json.loads(reply.read())
        answered.append((time.monotonic() - started, [(i["SourceName"], i["DestinationName"]) for i in rows]))

    # Blocking: with nothing changed, the query holds until its wait runs out.
    started = time.monotonic()
    quiet = urllib.request.Request(
        f"{acl_agent.http_addr}/v1/connect/intentions?index={index}&wait=1s",
        headers={"X-Consul-Token": order},
    )
    with urllib.request.urlopen(quiet, timeout=10) as reply:
        assert int(reply.headers["X-Consul-Index"]) == index
    assert time.monotonic() - started >= 0.9

    # A change wakes it (sent before or after the query arrives: either way it answers at once).
    waiter = threading.Thread(target=block)
    waiter.start()
    acl.set_intention("gateway", "payment", "allow")
    waiter.join(20)
    assert not waiter.is_alive()
    [(took, seen)] = answered
    assert took < 20 and ("gateway", "payment") in seen  # woken by the change, not the 30 s wait

    with pytest.raises(ConsulAclError) as refused:
        ConsulAcl(acl_agent.http_addr, order).set_intention("payment", "order", "allow")
    assert refused.value.status == 403
    assert order not in str(refused.value)


def test_a_token_with_a_chosen_secret_is_given_again_after_the_agent_restarts(
    acl_agent: ConsulDevAgent,
) -> None:
    acl = ConsulAcl(acl_agent.http_addr, acl_agent.master_token)
    acl.create_policy("test-order", service_policy_rules("order"))
    secret = str(uuid.uuid4())
    assert acl.create_token("test-order", "order", secret_id=secret) == secret
    assert acl.create_token("test-order", "order again", secret_id=secret) == secret  # updated in place
    assert request(acl_agent, "GET", "/v1/agent/connect/ca/leaf/order", secret)[0] == 200

    acl_agent.stop()
    acl_agent.start()  # same ports, same master token, everything else forgotten
    assert not ConsulAcl(acl_agent.http_addr, secret).token_works()
    assert ConsulAcl(acl_agent.http_addr, acl_agent.master_token).token_works()
    acl.create_policy("test-order", service_policy_rules("order"))
    assert acl.create_token("test-order", "order", secret_id=secret) == secret
    assert request(acl_agent, "GET", "/v1/agent/connect/ca/leaf/order", secret)[0] == 200


def test_errors_name_the_request_and_the_answer_never_the_token(acl_agent: ConsulDevAgent) -> None:
    secret = str(uuid.uuid4())
    with pytest.raises(ConsulAclError) as refused:
        ConsulAcl(acl_agent.http_addr, secret).create_policy("p", service_policy_rules("order"))
    assert refused.value.status == 403
    assert "/v1/acl/policy" in str(refused.value) and acl_agent.http_addr in str(refused.value)
    assert secret not in str(refused.value) and secret not in repr(ConsulAcl(acl_agent.http_addr, secret))
    nobody = ConsulAcl(f"127.0.0.1:{free_port()}", secret, timeout=1)
    with pytest.raises(ConsulAclError, match="no answer"):
        nobody.acl_enabled()


def test_the_registrars_presence_check_sends_the_workloads_token(
    acl_agent: ConsulDevAgent, health_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """py-consul's service_definition sends no token; the registrar's re-registration check
    (``is_registered``) must still see its own instance under default deny, and the token in
    the settings wins over a stray CONSUL_HTTP_TOKEN in the environment."""
    from mesh.registry.consul_api import ConsulApi

    order = workload_token(acl_agent, "order")
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "not-the-workloads-token")
    service_id = f"order-127.0.0.1-{health_port}"

    async def check() -> tuple[bool, bool]:
        api = ConsulApi(acl_agent.http_addr, token=order)
        try:
            before = await api.is_registered(service_id)
            assert register(acl_agent, order, "order", health_port) == (200, None)
            return before, await api.is_registered(service_id)
        finally:
            await api.close()

    assert asyncio.run(check()) == (False, True)
