"""The whole shop across hosts: ``make cluster`` brings up what a multi-host topology file names.

Each host of the file (deploy/cluster.toml) is a network namespace (services/cluster/network.py);
the Consul servers form a Raft cluster and every other host runs a client agent
(services/cluster/consul.py), with ACLs on, default deny, and the shop's mesh policy applied
(services/mesh_policy.py: one token per identity, the intentions). Then, on each host, the
service instances the file places there, each process inside its host's namespace:

- it binds and advertises its host's address (``MESH_HOST``), on the service's usual port;
- it registers with, and discovers through, its own host's agent (``CONSUL_HTTP_ADDR`` =
  127.0.0.1:8500 inside the namespace), with stale reads (``MESH_CONSUL_STALE``), so a cluster
  without a leader still answers with the last endpoints it knew;
- its database is the machine's PostgreSQL, one database per service shared by that service's
  instances on every host (a saga's lease passes between hosts only through a shared
  database; SQLite is one file on one host), reached at 127.0.0.1:<port> inside the namespace;
  RabbitMQ the same way. Both are forwarded over Unix sockets (``Network.reach``): the hosts
  get no route to the machine.

The gateway runs on the topology's gateway host and is forwarded to the machine's
127.0.0.1:8080 (``GATEWAY_PORT``), so the REST lines of ``make run`` work unchanged; one Consul
server's API is forwarded to 127.0.0.1:8500 (``CONSUL_HTTP_ADDR``'s port) for ``mesh status``
and ``mesh cert``.

Readiness is read from Consul: an instance is up when the agents' gRPC health check of its
address and port passes (the machine cannot dial into a namespace, and that check is the one
every caller's discovery follows anyway).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from mesh.registry.dev_agent import free_port
from services import mesh_policy
from services.cluster.consul import HTTP_PORT, ConsulCluster
from services.cluster.network import Network
from services.common.settings import DEFAULT_PORTS
from services.launcher import ROOT, LaunchError, spawn, start_failure
from services.topology import SERVICES, Topology

GATEWAY_PORT = 8080
HEALTH_PORT_OFFSET = 1000
"""An instance's plaintext health listener is its port + 1000 (50054 -> 51054) on its host."""
SECOND_INSTANCE_OFFSET = 100
"""A second instance of a service on one host listens 100 ports up (50054, 50154, …)."""
LISTEN_PORTS = "50000-52999"
"""Kept out of every host's ephemeral range: the services' ports and their health ports, up to
MAX_INSTANCES of one service on one host. CI saw an order instance fail to bind
10.213.37.21:51052, the source port of some outgoing connection on its host."""
DATABASE_SERVICES = ("user", "order", "payment", "inventory", "shipping")


@dataclass(frozen=True)
class ClusterSettings:
    """How ``make cluster`` runs: one typed value, read from the environment in ``__main__``."""

    workdir: Path
    """Consul data, token files, logs and the forwarders' sockets (made fresh by each run)."""
    consul_binary: str
    gateway_root_port: int = GATEWAY_PORT
    consul_root_port: int = HTTP_PORT
    postgres_admin_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    """Creates the shop's databases; its host and port are what the hosts are forwarded to."""
    database_prefix: str = "tsunagu_cluster"
    """The shop's databases are ``<prefix>_<service>``: made when missing, kept between runs."""
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    forwarded_ports: tuple[int, ...] = ()
    """More of the machine's loopback ports every host reaches at the same port (an OTLP collector)."""
    child_env: Mapping[str, str] = field(default_factory=dict)
    """What every process gets besides its own settings (keys, MESH_INSECURE, SHOP_* …)."""
    mtls: bool = True
    say: Callable[[str], None] = print


@dataclass
class Placed:
    """One process on one host, as the supervisor and the fleet see it."""

    name: str
    host: str
    address: str
    port: int
    process: subprocess.Popen[bytes]
    respawn: Callable[[], subprocess.Popen[bytes]]
    ready: Callable[[subprocess.Popen[bytes]], None]


@dataclass
class ClusterShop:
    """A running multi-host shop; :meth:`close` stops every process and removes every namespace."""

    topology: Topology
    settings: ClusterSettings
    network: Network | None = None
    consul: ConsulCluster | None = None
    token_files: dict[str, Path] = field(default_factory=dict)
    children: list[Placed] = field(default_factory=list)
    databases: dict[str, str] = field(default_factory=dict)
    _master_token: str = field(default="", repr=False)

    @property
    def log_dir(self) -> Path:
        return self.settings.workdir / "logs"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.gateway_root_port}"

    @property
    def consul_address(self) -> str:
        return f"127.0.0.1:{self.settings.consul_root_port}"

    def start(self) -> ClusterShop:
        """Bring everything up, in order; on any failure what was started is stopped again."""
        try:
            self._open_network()
            self._start_consul()
            self._create_databases()
            self._seed_admin()
            self._start_services()
            self._start_gateway()
        except BaseException:
            self.close()
            raise
        return self

    # -- the pieces, in start order ------------------------------------------------------

    def _open_network(self) -> None:
        workdir = self.settings.workdir
        if workdir.exists():
            shutil.rmtree(workdir)  # a fresh cluster each run: Consul state, sockets, old tokens
        (workdir / "sockets").mkdir(parents=True)
        first = ipaddress.IPv4Address(self.topology.hosts[0].address)
        subnet = ipaddress.IPv4Network(f"{first}/24", strict=False)
        self.network = Network(subnet, workdir / "sockets", reserved_ports=LISTEN_PORTS).open(
            [(host.name, host.address) for host in self.topology.hosts]
        )
        postgres = _port_of(self.settings.postgres_admin_dsn, 5432)
        rabbit = _port_of(self.settings.amqp_url, 5672)
        for host in self._app_hosts():
            self.network.reach(host, postgres, postgres)
            self.network.reach(host, rabbit, rabbit)
        for name in self.network.hosts:
            for port in self.settings.forwarded_ports:
                self.network.reach(name, port, port)
        self.say(
            f"  network    {len(self.topology.hosts)} hosts in {subnet} "
            f"(namespaces {self.network.switch.removesuffix('switch')}*)"
        )

    def _start_consul(self) -> None:
        assert self.network is not None
        self._master_token = str(uuid.uuid4())
        servers = self.topology.consul_servers
        clients = [h.name for h in self.topology.hosts if h.name not in servers]
        self.consul = ConsulCluster(
            self.network,
            servers,
            clients,
            self.settings.workdir / "consul",
            self.settings.consul_binary,
            self._master_token,
        )
        root_ports = {name: free_port() for name in [*servers, *clients]}
        root_ports[servers[0]] = self.settings.consul_root_port
        self.consul.start(root_ports)
        leader, seconds = self.consul.wait_leader(servers, within=60)
        self.consul.wait_acl(within=30)
        self.consul.grant_agent_tokens()
        self.token_files = mesh_policy.apply(
            self.consul.agents[servers[0]].http, self._master_token, self.settings.workdir / "tokens"
        )
        self.say(
            f"  consul     {len(servers)} servers, {len(clients)} client agents; leader {leader} "
            f"after {seconds:.1f} s; ACLs on (default deny, down_policy extend-cache)"
        )

    def _create_databases(self) -> None:
        admin = self.settings.postgres_admin_dsn
        base = admin.rsplit("/", 1)[0]
        with psycopg.connect(admin, autocommit=True) as connection:
            present = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
            for service in DATABASE_SERVICES:
                name = f"{self.settings.database_prefix}_{service}"
                if name not in present:
                    connection.execute(f'CREATE DATABASE "{name}"')
                self.databases[service] = f"{base}/{name}"

    def _seed_admin(self) -> None:
        env = dict(self.settings.child_env, USER_DATABASE_URL=self.databases["user"])
        seeded = subprocess.run(
            [sys.executable, "-m", "services.user.seed_admin"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            check=False,
        )
        if seeded.returncode != 0:
            raise LaunchError(f"could not seed the admin account: {seeded.stderr.decode(errors='replace')}")

    def _start_services(self) -> None:
        started = []
        for service in SERVICES:
            for host in self.topology.placements(service):
                started.append(self.start_instance(service, host.name))
        for child in started:
            child.ready(child.process)
            self.say(
                f"  {child.name:<10} {child.host:<8} {child.address}:{child.port}  pid {child.process.pid}  passing"
            )

    def _start_gateway(self) -> None:
        assert self.network is not None
        host = self.topology.gateway_host
        env = self._env("gateway", host.name)
        env = {k: v for k, v in env.items() if not k.endswith("PRIVATE_KEY_FILE")}
        env.update(
            GATEWAY_HOST="0.0.0.0", GATEWAY_ADVERTISE_HOST=host.address, GATEWAY_PORT=str(GATEWAY_PORT)
        )
        respawn = partial(self._spawn, "gateway", env, host.name, f"gateway-{host.name}")
        self.network.expose(host.name, GATEWAY_PORT, self.settings.gateway_root_port)
        log = self.log_dir / f"gateway-{host.name}.log"
        http_ready = partial(_wait_http_ready, f"{self.gateway_url}/readyz", log)
        registered = partial(self._wait_passing, "gateway", host.name, host.address, GATEWAY_PORT, log)

        def ready(process: subprocess.Popen[bytes]) -> None:  # answering here, and passing in Consul
            http_ready(process)
            registered(process)

        child = Placed("gateway", host.name, host.address, GATEWAY_PORT, respawn(), respawn, ready)
        self.children.append(child)
        child.ready(child.process)
        self.say(
            f"  gateway    {host.name:<8} {host.address}:{GATEWAY_PORT}  pid {child.process.pid}  READY at {self.gateway_url}"
        )

    # -- instances -------------------------------------------------------------------------

    def start_instance(self, service: str, host: str) -> Placed:
        """Spawn one instance of ``service`` on ``host`` at the next free port there; no waiting."""
        address = self.topology.host(host).address
        taken = {c.port for c in self.children if c.host == host}
        port = DEFAULT_PORTS[service]
        while port in taken:
            port += SECOND_INSTANCE_OFFSET
        env = self._env(service, host)
        env.update(MESH_HOST=address, MESH_PORT=str(port))
        env[f"{service.upper()}_DATABASE_URL"] = self.databases[service]
        if self.settings.mtls:
            env["MESH_HEALTH_PORT"] = str(port + HEALTH_PORT_OFFSET)
        if service != "user":
            env.pop("MESH_JWT_PRIVATE_KEY_FILE", None)  # only the issuer signs user tokens
        log_name = f"{service}-{host}-{port}"
        respawn = partial(self._spawn, f"services.{service}", env, host, log_name)
        ready = partial(self._wait_passing, service, host, address, port, self.log_dir / f"{log_name}.log")
        child = Placed(service, host, address, port, respawn(), respawn, ready)
        self.children.append(child)
        return child

    def least_loaded_host(self, service: str) -> str:
        """Where a new instance of ``service`` goes: the app host running fewest of it (file order)."""
        hosts = self._app_hosts()
        running = {
            host: sum(1 for c in self.children if c.name == service and c.host == host) for host in hosts
        }
        return min(hosts, key=lambda host: running[host])

    def _app_hosts(self) -> list[str]:
        placed = {host.name for service in SERVICES for host in self.topology.placements(service)}
        return [host.name for host in self.topology.hosts if host.name in placed]

    def _env(self, identity: str, host: str) -> dict[str, str]:
        env = dict(self.settings.child_env)
        env.update(
            CONSUL_HTTP_ADDR=f"127.0.0.1:{HTTP_PORT}",  # this host's own agent
            CONSUL_HTTP_TOKEN_FILE=str(self.token_files[identity]),
            MESH_CONSUL_STALE="1",
            MESH_DATA_DIR=str(self.settings.workdir / "hosts" / host / "data"),
            SHOP_AMQP_URL=self.settings.amqp_url,
        )
        return env

    def _spawn(self, module: str, env: dict[str, str], host: str, log_name: str) -> subprocess.Popen[bytes]:
        assert self.network is not None
        namespace = self.network.hosts[host].command([])
        return spawn(module, env, log_name, log_dir=self.log_dir, host=namespace)

    def _wait_passing(
        self,
        service: str,
        host: str,
        address: str,
        port: int,
        log: Path,
        process: subprocess.Popen[bytes],
        timeout: float = 120,
    ) -> None:
        """Block until Consul's check of ``address:port`` passes; LaunchError with its log if it dies.

        Asked of the instance's own host's agent, which it registered with: any other agent may
        be the one a fault took down.
        """
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                died = RuntimeError(f"exited with {process.returncode}")
                raise start_failure(f"{service} at {address}:{port}", process, died, log)
            if (address, port) in self.passing(service, via=host):
                return
            if time.monotonic() > deadline:
                late = TimeoutError(f"not passing in Consul after {timeout:g} s")
                raise start_failure(f"{service} at {address}:{port}", process, late, log)
            time.sleep(0.2)  # poll interval

    def passing(self, service: str, via: str) -> set[tuple[str, int]]:
        """``(address, port)`` of ``service``'s passing instances, as ``via``'s agent answers (empty: it cannot)."""
        assert self.consul is not None
        try:
            rows = self.consul.get(via, f"/v1/health/service/{service}?passing=1&stale")
        except (OSError, ValueError, urllib.error.URLError):
            return set()
        return {(row["Service"]["Address"], row["Service"]["Port"]) for row in rows}

    def say(self, line: str) -> None:
        self.settings.say(line)

    # -- state for tools and tests ---------------------------------------------------------

    def state(self) -> dict[str, object]:
        """What a test or an operator needs to find things (no secret: tokens stay in their files)."""
        assert self.network is not None and self.consul is not None
        return {
            "owner": self.network.owner,
            "switch": self.network.switch,
            "gateway": self.gateway_url,
            "consul": self.consul_address,
            "tokens": str(self.settings.workdir / "tokens"),
            "hosts": {
                name: {
                    "namespace": link.namespace,
                    "address": link.address,
                    "link": link.switch_side,
                    "consul_http": self.consul.agents[name].http,
                    "consul_pid": self.consul.agents[name].pid,
                    "consul_config": str(self.consul.agents[name].config),
                    "consul_server": self.consul.agents[name].server,
                }
                for name, link in self.network.hosts.items()
            },
            "databases": {name: dsn.rsplit("/", 1)[1] for name, dsn in self.databases.items()},
        }

    def write_state(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.state(), indent=2))
        temporary.replace(path)

    # -- stopping --------------------------------------------------------------------------

    def close(self, grace: float = 15.0) -> None:
        """SIGTERM the shop's processes (by PID), then the agents, then remove the namespaces."""
        stop_processes([c.process for c in self.children], grace)
        if self.consul is not None:
            self.consul.stop()
        if self.network is not None:
            self.network.close()


def stop_processes(processes: Sequence[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM each (newest first) and wait, together, up to ``grace`` s; SIGKILL what is left."""
    for process in reversed(processes):
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_http_ready(url: str, log: Path, process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise start_failure(url, process, RuntimeError(f"exited with {process.returncode}"), log)
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise start_failure(url, process, TimeoutError(f"not ready after {timeout:g} s"), log)
        time.sleep(0.1)  # poll interval


def _port_of(url: str, default: int) -> int:
    """The port of a DSN or URL (``scheme://user@host:port/...``), ``default`` when it names none."""
    return urlsplit(url).port or default
