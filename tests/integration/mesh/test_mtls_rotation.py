"""A Connect CA root rotation under steady load: no call fails, and every party moves to the new root.

A real Consul dev agent, two mTLS servers of "inventory" registered there (in this process,
on real sockets, as in test_mtls.py) and an "order" client MeshChannel with its own
identity. While several callers keep a paced load of ~250 calls/s on the channel, the test
hands the agent a root it holds the key of (``use_ca``): the agent then serves two roots and
re-issues every leaf. What must hold:

- no call fails, before, during or after the rotation, and calls keep succeeding after it;
- both servers trust the new root, and both servers and the client hold a new leaf issued
  by it;
- the client's channels were renewed once: one new TLS handshake reached every server (the
  server credentials' counter), and calls arrived presenting the client's new leaf;
- a new connection to a server is answered with the server's new leaf.

Consul 1.8 re-issues a leaf at a random moment within 30 s of a root change (its
``caChangeJitterWindow``; 2.7-27 s seen here), the roots within ~10 ms; so the load runs
until every leaf has moved and then for a bounded number of calls more: the test takes 5-35 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from mesh.channel import MeshChannel, mesh_channel
from mesh.config import ServerSettings
from mesh.connect.settings import SecuritySettings
from mesh.connect.setup import ConnectedWorkload, connect_workload
from mesh.connect.workload import Bundle, WorkloadIdentity
from mesh.registry import ConsulDiscovery, ConsulRegistrar
from mesh.registry.dev_agent import ConsulDevAgent
from mesh.server import HostedService, MeshServer
from tests.support.connect import OwnCA, own_ca, set_intention, trust_domain, use_ca
from tests.support.waiting import wait_until

ECHO = "tsunagu.test.Echo"
SAY = f"/{ECHO}/Say"
SERVERS = 2
CALLERS = 8
RATE = 250.0  # calls/s offered by all callers together
BEFORE_CALLS = 250  # calls made before the rotation starts (~1 s)
AFTER_CALLS = 500  # calls made after every leaf moved and reached the servers (~2 s)
LEAF_WITHIN = 45.0  # Consul spreads leaf re-issue over 30 s after a root change
LOAD_SECONDS_MAX = 70.0  # every wait below is bounded; this bounds the callers too


class Echo(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Answers ``Say`` with the request's bytes, counting calls by the caller's certificate serial."""

    def __init__(self) -> None:
        self.by_serial: Counter[int] = Counter()
        self._serials: dict[bytes, int] = {}

    @property
    def calls(self) -> int:
        return sum(self.by_serial.values())

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method != SAY:
            return None
        return grpc.unary_unary_rpc_method_handler(self.say)

    async def say(self, request: bytes, context: Any) -> bytes:
        [pem] = context.auth_context()["x509_pem_cert"]
        serial = self._serials.get(pem)
        if serial is None:
            serial = self._serials[pem] = x509.load_pem_x509_certificate(pem).serial_number
        self.by_serial[serial] += 1
        return request


@dataclass
class Server:
    server: MeshServer
    workload: ConnectedWorkload
    echo: Echo

    @property
    def identity(self) -> WorkloadIdentity:
        return self.workload.identity

    async def stop(self) -> None:
        await self.server.stop(0)
        await self.workload.close()


async def start_server(agent: ConsulDevAgent) -> Server:
    workload = await connect_workload("inventory", agent.http_addr, SecuritySettings())
    assert workload is not None
    echo = Echo()
    server = MeshServer(
        ServerSettings("inventory", 0, grace_seconds=0),
        [HostedService(ECHO, lambda s: s.add_generic_rpc_handlers((echo,)))],
        security=workload,
        hooks=[ConsulRegistrar(agent.http_addr, propagation_delay=0)],
    )
    await server.start()
    return Server(server, workload, echo)


@dataclass
class Mesh:
    agent: ConsulDevAgent
    servers: list[Server]
    client: ConnectedWorkload
    channel: MeshChannel


@pytest.fixture
async def mesh(consul_agent: ConsulDevAgent) -> AsyncIterator[Mesh]:
    set_intention(consul_agent, "order", "inventory", "allow")
    servers: list[Server] = []
    client: ConnectedWorkload | None = None
    discovery = ConsulDiscovery(consul_agent.http_addr)
    channel: MeshChannel | None = None
    try:
        for _ in range(SERVERS):
            servers.append(await start_server(consul_agent))
        client = await connect_workload("order", consul_agent.http_addr, SecuritySettings())
        assert client is not None
        channel = mesh_channel("inventory", discovery, identity=client.identity)
        await wait_until(
            lambda: len(consul_agent.passing("inventory")) >= SERVERS, 20, "both servers passing", step=0.1
        )
        await channel.wait_for_endpoints(SERVERS, within=10)
        yield Mesh(consul_agent, servers, client, channel)
    finally:
        if channel is not None:
            await channel.close(0)
        await discovery.close()
        if client is not None:
            await client.close()
        for server in servers:
            await server.stop()


@dataclass
class Load:
    """A paced load: ``callers`` coroutines, each calling every ``callers / rate`` seconds."""

    say: Callable[..., Any]
    ok: list[float] = field(default_factory=list)  # completion times (loop clock)
    failed: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = 0.0

    async def caller(self, offset: float, period: float, limit: int) -> None:
        loop = asyncio.get_running_loop()
        for n in range(limit):
            delay = self.started + offset + n * period - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), delay)
            if self.stop.is_set():
                return
            try:
                reply = await self.say(b"rotate", timeout=5)
            except grpc.aio.AioRpcError as error:
                self.failed.append(f"{error.code().name}: {error.details()}")
                continue
            assert reply == b"rotate"
            self.ok.append(loop.time())

    def run(self, callers: int, rate: float, seconds: float) -> list[Coroutine[Any, Any, None]]:
        """The callers' coroutines (bounded: at most ``rate * seconds`` calls in all)."""
        self.started = asyncio.get_running_loop().time()
        period = callers / rate
        limit = int(seconds * rate / callers) + 1
        return [self.caller(i * period / callers, period, limit) for i in range(callers)]


def serial(pem: str) -> int:
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def issued_by(pem: str, ca: OwnCA) -> bool:
    try:
        x509.load_pem_x509_certificate(pem.encode()).verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def presented_leaf(port: int, client: WorkloadIdentity, directory: Path) -> int:
    """Open a new TLS connection to ``port`` as ``client`` and return the serial the server presents."""
    bundle = client.bundle
    (directory / "cert.pem").write_text(bundle.leaf.cert_pem)
    (directory / "key.pem").write_text(bundle.leaf.key_pem)
    context = ssl.create_default_context(cadata=bundle.roots.pem)
    context.check_hostname = False  # Consul's leaves name the server in the CN, which ssl ignores
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=bundle.server_name("inventory")) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


async def test_a_ca_root_rotation_under_load_fails_no_call_and_moves_every_party_to_the_new_root(
    mesh: Mesh, tmp_path: Path
) -> None:
    servers, client = mesh.servers, mesh.client.identity
    say = mesh.channel.unary_unary(SAY)
    async with asyncio.timeout(10):  # warm: a connection to each server, each has served
        while any(s.echo.calls == 0 for s in servers):
            assert await say(b"warm", timeout=5) == b"warm"
    old_root = mesh.client.identity.bundle.roots.pem
    old_server_leaf = serial(servers[0].identity.bundle.leaf.cert_pem)
    assert all(serial(s.identity.bundle.leaf.cert_pem) == old_server_leaf for s in servers)
    old_client_leaf = serial(client.bundle.leaf.cert_pem)
    handshakes = [s.identity.handshakes for s in servers]
    ours = own_ca(trust_domain(mesh.agent))

    load = Load(say)
    loop = asyncio.get_running_loop()
    renewals: list[str] = []  # when each party got which bundle, seconds after the rotation began
    rotated = 0.0

    def record(name: str) -> Callable[[Bundle], None]:
        def renewed(bundle: Bundle) -> None:
            at = loop.time() - rotated
            renewals.append(f"{name} {at:.2f}s roots={bundle.roots.count} leaf={bundle.leaf.serial}")

        return renewed

    for name, identity in (("client", client), *((f"server{i}", s.identity) for i, s in enumerate(servers))):
        identity.subscribe(record(name))
    callers = asyncio.gather(*load.run(CALLERS, RATE, LOAD_SECONDS_MAX))
    try:
        await wait_until(
            lambda: len(load.ok) >= BEFORE_CALLS, 10, f"{BEFORE_CALLS} calls before the rotation"
        )
        # Steady load reuses the connections: not one handshake more than the warm-up made.
        assert [s.identity.handshakes for s in servers] == handshakes

        rotated = loop.time()
        await asyncio.to_thread(use_ca, mesh.agent, ours)
        new_root = ours.cert_pem.strip()
        await wait_until(
            lambda: all(new_root in w.bundle.roots.pem for w in (client, *(s.identity for s in servers))),
            10,
            "every party trusting the new root",
        )
        await wait_until(
            lambda: (
                all(serial(s.identity.bundle.leaf.cert_pem) != old_server_leaf for s in servers)
                and serial(client.bundle.leaf.cert_pem) != old_client_leaf
            ),
            LEAF_WITHIN,
            "a new leaf in the servers and the client",
            step=0.05,
        )
        new_client_leaf = serial(client.bundle.leaf.cert_pem)
        await wait_until(
            lambda: all(s.echo.by_serial[new_client_leaf] > 0 for s in servers),
            10,
            "calls presenting the client's new leaf at every server",
        )
        settled = len(load.ok)
        await wait_until(
            lambda: len(load.ok) - settled >= AFTER_CALLS, 15, f"{AFTER_CALLS} calls after the rotation"
        )
    finally:
        load.stop.set()
        await callers
    seconds = load.ok[-1] - load.started
    rate = len(load.ok) / seconds
    moved = [s.identity.handshakes - before for s, before in zip(servers, handshakes, strict=True)]
    print(  # the figures the docs quote (-s)
        f"\n{len(load.ok)} calls in {seconds:.1f} s ({rate:.0f}/s), {len(load.failed)} failed, "
        f"{len(load.ok) - settled} after every leaf moved; rotation {rotated - load.started:.1f} s into "
        f"the load; new handshakes per server {moved}; renewals: {'; '.join(renewals)}"
    )

    assert load.failed == []
    assert rate >= 100, rate
    assert len(load.ok) - settled >= AFTER_CALLS
    for server in servers:
        bundle = server.identity.bundle
        assert bundle.roots.count == 2
        assert new_root in bundle.roots.pem and old_root.strip() in bundle.roots.pem
        assert serial(bundle.leaf.cert_pem) != old_server_leaf
        assert issued_by(bundle.leaf.cert_pem, ours)
        # both leaves of the client were seen: the old before the rotation, the new after it
        assert server.echo.by_serial[old_client_leaf] > 0 and server.echo.by_serial[new_client_leaf] > 0
    assert issued_by(client.bundle.leaf.cert_pem, ours)
    # One handshake per server for the whole rotation: the channel renewed its connections
    # when its own leaf changed, not when the roots did (the new leaves carry the cross-signed
    # root, so the connections open then still verified them).
    assert moved == [1] * SERVERS, moved
    # A connection opened now gets the server's new leaf (the dynamic credentials' fetch).
    for server in servers:
        presented = await asyncio.to_thread(presented_leaf, server.server.port, client, tmp_path)
        assert presented == serial(server.identity.bundle.leaf.cert_pem) != old_server_leaf
