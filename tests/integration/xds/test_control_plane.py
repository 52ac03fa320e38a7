"""``mesh xds`` as a real process against a real Consul agent, read through a raw ADS stream.

What a client of the control plane sees on the wire: endpoints as Consul has them, changed
when an instance fails its check or leaves; the last state kept when Consul goes away; the
``xds`` service registered (and withdrawn on SIGTERM) with its admin port; ``/clients``
showing what each stream ACKed, as ``mesh status`` reports it; client certificate files and TLS
clusters under mTLS.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import stat
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.registry.acl import ConsulAcl, service_policy_rules
from mesh.registry.dev_agent import ConsulDevAgent, find_consul
from mesh.status import run_status
from mesh.xds import __main__ as entry
from mesh.xds.model import CLUSTER, CLUSTER_LOAD_ASSIGNMENT, LISTENER
from tests.integration.xds.conftest import AdsProbe, deregister, endpoints, register, set_check, unpack
from tests.support.processes import ROOT
from tests.support.waiting import wait_until
from tests.support.xds import ControlPlane

pytestmark = pytest.mark.xdist_group("xds-control-plane")

StartPlane = Callable[..., ControlPlane]
OpenProbe = Callable[..., AdsProbe]
NAMES = ("inventory",)


def ads_state(plane: ControlPlane, node_id: str, type_url: str) -> dict[str, Any] | None:
    """The admin endpoint's state of ``type_url`` on the stream of ``node_id`` (None: no such)."""
    for client in plane.admin("/clients"):
        if client["node"]["id"] == node_id and type_url in client["types"]:
            state: dict[str, Any] = client["types"][type_url]
            return state
    return None


def bootstrap_and_files(plane: ControlPlane) -> tuple[dict[str, Any], dict[str, Any]]:
    """The bootstrap document, and the certificate provider's files (contents, the key's mode)."""
    document = json.loads(plane.bootstrap.read_text())
    config = document["certificate_providers"]["mesh"]["config"]
    files: dict[str, Any] = {
        name: Path(config[name]).read_text() for name in ("certificate_file", "ca_certificate_file")
    }
    files["key_mode"] = stat.S_IMODE(os.stat(config["private_key_file"]).st_mode)
    return document, files


def registered(agent: ConsulDevAgent, name: str) -> list[dict[str, Any]]:
    rows = agent.get(f"/v1/health/service/{name}")
    assert isinstance(rows, list)
    return rows


async def test_endpoints_follow_consul_health_and_clients_show_what_they_acked(
    consul_agent: ConsulDevAgent, start_plane: StartPlane, probes: OpenProbe
) -> None:
    register(consul_agent, "inventory", "inventory-1", 9001)
    register(consul_agent, "inventory", "inventory-2", 9002)
    plane = start_plane()
    assert (
        f"xds  serving on 127.0.0.1:{plane.port}, admin http://127.0.0.1:{plane.admin_port}" in plane.logs()
    )
    probe = probes(plane.port)

    await probe.request(CLUSTER_LOAD_ASSIGNMENT, NAMES)
    first = await probe.read()
    assert endpoints(unpack(first)["inventory"]) == {9001: "HEALTHY", 9002: "HEALTHY"}
    await probe.ack(first, NAMES)

    set_check(consul_agent, "inventory-2", "fail")
    second = await probe.read()
    assert endpoints(unpack(second)["inventory"]) == {9001: "HEALTHY", 9002: "UNHEALTHY"}
    assert (second.version_info, second.nonce) != (first.version_info, first.nonce)
    await probe.ack(second, NAMES)

    deregister(consul_agent, "inventory-1")
    third = await probe.read()
    assert endpoints(unpack(third)["inventory"]) == {9002: "UNHEALTHY"}
    await probe.ack(third, NAMES)

    await wait_until(
        lambda: (
            (ads_state(plane, "probe", CLUSTER_LOAD_ASSIGNMENT) or {}).get("acked_version")
            == third.version_info
        ),
        10,
        "/clients shows the last ACK",
    )
    state = ads_state(plane, "probe", CLUSTER_LOAD_ASSIGNMENT)
    assert state is not None and state["subscribed"] == ["inventory"] and state["nack"] is None
    assert state["responses"] == 3 and state["sent_resources"] == ["inventory"]
    health = plane.admin("/healthz")
    assert health["ready"] and health["clients"] == 1 and health["mtls"] is False

    # `mesh status` finds the control plane through Consul and shows the client's ACKs.
    out = io.StringIO()
    assert await asyncio.to_thread(run_status, consul_agent.http_addr, out=out) == 0
    shown = out.getvalue()
    assert f"xds control plane 127.0.0.1:{plane.port}" in shown and "1 client(s) connected" in shown
    assert f"EDS  acked {third.version_info[:12]}  [inventory]" in shown, shown
    as_json = io.StringIO()
    assert await asyncio.to_thread(run_status, consul_agent.http_addr, as_json=True, out=as_json) == 0
    (listed,) = json.loads(as_json.getvalue())["xds"]
    connected = [c for c in listed["clients"] if c["connected"]]
    assert connected[0]["types"][CLUSTER_LOAD_ASSIGNMENT]["acked_version"] == third.version_info


async def test_a_service_unknown_to_consul_is_absent_until_it_registers(
    consul_agent: ConsulDevAgent, start_plane: StartPlane, probes: OpenProbe
) -> None:
    plane = start_plane()
    probe = probes(plane.port)
    await probe.request(LISTENER)  # wildcard: every service Consul knows
    listeners = await probe.read()
    assert "inventory" not in unpack(listeners)
    await probe.ack(listeners)
    register(consul_agent, "inventory", "inventory-1", 9001)
    while "inventory" not in unpack(listeners):  # the xds entry itself may change first
        await probe.ack(listeners)
        listeners = await probe.read()
    assert unpack(listeners)["inventory"].HasField("api_listener")


async def test_the_xds_service_is_registered_passing_and_withdrawn_on_sigterm(
    consul_agent: ConsulDevAgent, start_plane: StartPlane, probes: OpenProbe
) -> None:
    plane = start_plane()

    def passing() -> bool:
        rows = registered(consul_agent, "xds")
        return any(all(c["Status"] == "passing" for c in row["Checks"]) for row in rows)

    await wait_until(passing, 20, "the xds service passing its gRPC check")
    (row,) = registered(consul_agent, "xds")
    assert row["Service"]["Port"] == plane.port
    assert row["Service"]["Meta"]["admin_port"] == str(plane.admin_port)

    probe = probes(plane.port)
    await probe.request(CLUSTER)
    await probe.read()
    plane.stop()  # SIGTERM: deregister, end the streams, drain, exit
    assert plane.process is not None and plane.process.returncode == 0, plane.logs()
    assert registered(consul_agent, "xds") == []
    # The stream was ended by the server (clients keep their config and reconnect), not cut;
    # before that it may have carried the withdrawal of the xds entry itself.
    while (message := await asyncio.wait_for(probe.call.read(), 5)) is not grpc.aio.EOF:
        assert message.type_url == CLUSTER
    assert await probe.call.code() == grpc.StatusCode.OK


async def test_when_consul_goes_away_the_last_state_is_still_served(
    consul_agent: ConsulDevAgent, start_plane: StartPlane, probes: OpenProbe
) -> None:
    register(consul_agent, "inventory", "inventory-1", 9001)
    register(consul_agent, "inventory", "inventory-2", 9002)
    plane = start_plane()
    probe = probes(plane.port)
    await probe.request(CLUSTER_LOAD_ASSIGNMENT, NAMES)
    before = await probe.read()
    await probe.ack(before, NAMES)

    consul_agent.stop()  # killed by PID: every blocking query of the plane now fails

    late = probes(plane.port, "late")
    await late.request(CLUSTER_LOAD_ASSIGNMENT, NAMES)
    after = await late.read()
    assert after.version_info == before.version_info
    assert endpoints(unpack(after)["inventory"]) == {9001: "HEALTHY", 9002: "HEALTHY"}
    await late.request(CLUSTER)
    clusters = await late.read()
    assert "inventory" in unpack(clusters)
    await wait_until(lambda: "consul unreachable" in plane.logs(), 10, "the plane noticed the outage")
    state = ads_state(plane, "probe", CLUSTER_LOAD_ASSIGNMENT)
    assert state is not None and state["responses"] == 1  # nothing was withdrawn from the first stream
    assert plane.process is not None and plane.process.poll() is None
    assert plane.admin("/healthz")["ready"]


async def test_under_mtls_client_certificates_are_kept_and_clusters_carry_tls(
    consul_agent: ConsulDevAgent, start_plane: StartPlane, probes: OpenProbe, tmp_path: Path
) -> None:
    register(consul_agent, "inventory", "inventory-1", 9001)
    plane = start_plane(client_identity="cli")
    document, files = bootstrap_and_files(plane)
    assert document["xds_servers"][0]["server_uri"] == f"127.0.0.1:{plane.port}"
    assert document["node"]["id"] == "local-client" and document["node"]["locality"]["region"] == "dc1"
    assert files["key_mode"] == 0o600 and "BEGIN CERTIFICATE" in files["certificate_file"]
    roots = consul_agent.get("/v1/agent/connect/ca/roots")
    assert isinstance(roots, dict)
    assert files["ca_certificate_file"].strip() in "".join(r["RootCert"] for r in roots["Roots"])

    probe = probes(plane.port)
    await probe.request(CLUSTER)
    clusters = unpack(await probe.read())
    socket = clusters["inventory"].transport_socket
    assert socket.name == "envoy.transport_sockets.tls"
    assert roots["TrustDomain"] in socket.typed_config.value.decode(errors="replace")
    assert plane.admin("/healthz")["mtls"] is True


def test_the_admin_endpoint_answers_plain_http(start_plane: StartPlane) -> None:
    plane = start_plane()
    with urllib.request.urlopen(f"http://127.0.0.1:{plane.admin_port}/clients", timeout=5) as reply:
        assert reply.headers["Content-Type"] == "application/json" and json.loads(reply.read()) == []
    assert callable(entry.main)  # ``python -m mesh.xds`` is what ControlPlane runs


async def test_with_acls_each_identity_uses_its_own_token(tmp_path: Path, probes: OpenProbe) -> None:
    agent = ConsulDevAgent(find_consul(ROOT), tmp_path / "consul-acl.log", acls=True).start()
    plane: ControlPlane | None = None
    try:
        acl = ConsulAcl(agent.http_addr, agent.master_token)
        tokens = {}
        for name in ("xds", "cli"):
            acl.create_policy(name, service_policy_rules(name))
            tokens[name] = tmp_path / f"{name}.token"
            tokens[name].write_text(acl.create_token(name) + "\n")
        register(agent, "inventory", "inventory-1", 9001)
        plane = ControlPlane(
            agent.http_addr,
            tmp_path / "xds",
            client_identity="cli",
            extra_env={
                "CONSUL_HTTP_TOKEN_FILE": str(tokens["xds"]),
                "MESH_XDS_CLIENT_TOKEN_FILE": str(tokens["cli"]),
            },
        ).start()
        document, files = bootstrap_and_files(plane)
        assert "BEGIN CERTIFICATE" in files["certificate_file"]
        # The xds token may not read the agent itself: the datacenter comes from the catalog.
        assert document["node"]["locality"] == {"region": "dc1"}
        probe = probes(plane.port)
        await probe.request(CLUSTER_LOAD_ASSIGNMENT, NAMES)
        assert endpoints(unpack(await probe.read())["inventory"]) == {9001: "HEALTHY"}
        await wait_until(lambda: bool(agent.passing("xds")), 20, "xds registered with its own token")
    finally:
        if plane is not None:
            plane.kill()
        agent.stop()
