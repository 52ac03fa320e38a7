"""A five-service shop for saga tests, on SQLite files or on PostgreSQL databases.

The participants (user, inventory, payment, shipping) run for the whole module; the order
service is started and restarted by the tests (with or without a crash point) over the same
database, which is what a crash-and-resume test needs. Every process is stopped by its PID.

The shop runs with the event bus on, in a namespace of its own on the machine's RabbitMQ
(tests/support/bus.py, deleted afterwards): the order relay publishes, payment's billing issues
invoices and user's consumer records notifications, as in production.

With ``mtls=True`` it also runs as ``make run`` does between services: a Consul dev agent of
its own issues every process its certificate, intentions allow only the shop's calls, and every
call is mutual TLS. Discovery stays static (``MESH_DISCOVERY=static``), so a test can still put
a proxy between the order service and a participant. The test itself calls as ``cli``
(:meth:`SagaShop.aio_channel`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg

from mesh.connect.peer import peer_metadata
from mesh.registry.dev_agent import ConsulDevAgent, find_consul
from services.common.database import Database
from shop.user.v1 import user_pb2
from shop.user.v1.user_pb2_grpc import UserServiceStub
from tests.support.bus import Bus, bus_namespace
from tests.support.invariants import ShopDatabases
from tests.support.mtls_client import MeshClients, allow_shop_calls
from tests.support.processes import ROOT, ServiceProcess, free_port, service_env, stop_all
from tests.support.tokens import KeyPair

PARTICIPANTS = ("user", "inventory", "payment", "shipping")
Metadata = tuple[tuple[str, str], ...]
# Short leases and retries keep a resumed saga's wait well inside the tests' 30 s bound.
SAGA_ENV = {
    "ORDER_SAGA_LEASE_SECONDS": "1.5",
    "ORDER_SAGA_RETRY_BASE_SECONDS": "0.05",
    "ORDER_SAGA_RETRY_MAX_SECONDS": "0.5",
    # A crashed instance's relay may hold a claim on events: taken over after 1.5 s, not 10.
    "ORDER_OUTBOX_CLAIM_SECONDS": "1.5",
    # Sagas retrying against participants that are down open the order service's breakers;
    # half-open after 2 s instead of 60 s, so a restarted shop is called again within the bound.
    "MESH_POLICY__defaults__breaker__open_wait": "2",
}


@contextmanager
def postgres_databases(admin_dsn: str, names: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """One fresh PostgreSQL database per name, dropped afterwards."""
    created = {name: f"t_{name}_{uuid.uuid4().hex[:12]}" for name in names}
    base = admin_dsn.rsplit("/", 1)[0]
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        for database in created.values():
            admin.execute(f'CREATE DATABASE "{database}"')
    try:
        yield {name: f"{base}/{database}" for name, database in created.items()}
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            for database in created.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@dataclass
class SagaShop:
    root: Path
    keys: KeyPair
    urls: dict[str, str]
    bus: Bus
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    order: ServiceProcess | None = None
    started: list[ServiceProcess] = field(default_factory=list)
    customer: Metadata = ()
    mesh: MeshClients | None = None  # the mTLS shop's certificates; None: plaintext

    def aio_channel(self, name: str, identity: str = "cli") -> grpc.aio.Channel:
        """A channel to the current ``name`` process, as ``identity`` under mTLS."""
        if self.mesh is None:
            return grpc.aio.insecure_channel(self.address(name))
        return self.mesh.aio_channel(self.address(name), name, identity)

    def caller_metadata(self, service: str) -> Metadata:
        """What a call made as ``service`` carries besides its channel's certificate."""
        return peer_metadata(service, insecure=self.mesh is None)

    @property
    def databases(self) -> ShopDatabases:
        return ShopDatabases(**{n: self.urls[n] for n in ("order", "inventory", "payment", "shipping")})

    def address(self, name: str) -> str:
        return self.order.address if name == "order" and self.order else self.processes[name].address

    def _process(self, name: str, **env: str) -> ServiceProcess:
        port = free_port()
        base = {
            "MESH_PORT": str(port),
            "MESH_DATA_DIR": str(self.root / "data"),
            f"{name.upper()}_DATABASE_URL": self.urls[name],
            **self.keys.env(name),
            **self.bus.env(),
        }
        if self.mesh is not None:
            base.update(
                CONSUL_HTTP_ADDR=self.mesh.agent.http_addr,
                MESH_INSECURE="0",
                MESH_DISCOVERY="static",
                MESH_HEALTH_PORT=str(free_port()),
            )
        process = ServiceProcess(name, port, service_env(base, **env), self.root / f"{name}-{port}.log")
        self.started.append(process)
        return process

    def start_participants(self) -> None:
        settings = {"user": {}, "inventory": {"INVENTORY_SEED_DEMO": "1"}, "payment": {}, "shipping": {}}
        with ThreadPoolExecutor(len(settings)) as pool:
            futures = {n: pool.submit(self._process(n, **env).start) for n, env in settings.items()}
            self.processes = {n: f.result() for n, f in futures.items()}
        # The consumers declare and bind their queues in the background after start; events
        # published before that would route nowhere, so wait (polled) until both consume.
        for consumer in self.bus.consumers:
            self.bus.wait_consumer(consumer)
        with self._sync_channel("user") as channel:
            self.customer = login(channel, f"saga-{uuid.uuid4().hex[:8]}@example.com")

    def _sync_channel(self, name: str) -> grpc.Channel:
        if self.mesh is None:
            return grpc.insecure_channel(self.address(name))
        return self.mesh.channel(self.address(name), name)

    def start_order(self, crash_at: str = "", upstreams: Mapping[str, str] | None = None) -> ServiceProcess:
        """A fresh order process over the shop's order database (stopping the previous one);
        ``upstreams`` overrides where it reaches some participants (a proxy's address)."""
        if self.order is not None:
            self.order.terminate()
        targets = {n: self.address(n) for n in PARTICIPANTS} | dict(upstreams or {})
        env = {f"MESH_UPSTREAM_{n.upper()}": address for n, address in targets.items()}
        env.update(SAGA_ENV)
        if crash_at:
            env["ORDER_FAULT_CRASH_AT"] = crash_at
        self.order = self._process("order", **env).start()
        return self.order

    def kill_participants(self) -> None:
        """SIGKILL every participant, as a host going down would (the order process is left)."""
        for process in self.processes.values():
            process.kill()

    def restart_participants(self) -> None:
        """Start every participant again on its own port, over its own data, and wait until the
        event consumers are back on their queues."""
        with ThreadPoolExecutor(len(self.processes)) as pool:
            for future in [pool.submit(process.start) for process in self.processes.values()]:
                future.result()
        for consumer in self.bus.consumers:
            self.bus.wait_consumer(consumer)

    def stop(self) -> None:
        stop_all(reversed(self.started))


def login(channel: grpc.Channel, email: str) -> Metadata:
    users = UserServiceStub(channel)
    users.CreateUser(user_pb2.CreateUserRequest(email=email, password="correct horse 9", display_name="S"))
    reply = users.Login(user_pb2.LoginRequest(email=email, password="correct horse 9"))
    return (("authorization", f"Bearer {reply.access_token}"),)


@contextmanager
def saga_shop(
    root: Path, keys: KeyPair, backend: str, admin_dsn: str, *, mtls: bool = False
) -> Iterator[SagaShop]:
    """The participants running and no order process yet; all stopped (and dropped) after."""
    names = ("order", *PARTICIPANTS)
    with bus_namespace() as bus, mesh_agent(root, mtls) as mesh:
        yield from _shop(root, keys, backend, admin_dsn, names, bus, mesh)


@contextmanager
def mesh_agent(root: Path, mtls: bool) -> Iterator[MeshClients | None]:
    """A Consul dev agent with the shop's intentions for an mTLS shop (stopped by its PID)."""
    if not mtls:
        yield None
        return
    agent = ConsulDevAgent(find_consul(ROOT), root / "consul.log").start()
    try:
        allow_shop_calls(agent)
        yield MeshClients(agent)
    finally:
        agent.stop()


def _shop(
    root: Path,
    keys: KeyPair,
    backend: str,
    admin_dsn: str,
    names: tuple[str, ...],
    bus: Bus,
    mesh: MeshClients | None,
) -> Iterator[SagaShop]:
    if backend == "postgresql":
        with postgres_databases(admin_dsn, names) as urls:
            shop = SagaShop(root, keys, urls, bus, mesh=mesh)
            try:
                shop.start_participants()
                yield shop
            finally:
                shop.stop()
        return
    shop = SagaShop(root, keys, {n: str(root / "data" / f"{n}.sqlite3") for n in names}, bus, mesh=mesh)
    try:
        shop.start_participants()
        yield shop
    finally:
        shop.stop()


async def order_for_request(urls: dict[str, str], request_id: str) -> str:
    """The order id the order service stored for a request id ('' if none)."""
    database = Database("order", urls["order"], workers=1)
    try:
        row = await database.transact(
            lambda tx: tx.one("SELECT order_id FROM orders WHERE request_id = ?", (request_id,))
        )
    finally:
        await database.close()
    return str(row["order_id"]) if row else ""
