"""``make run``: start the whole shop on this machine and stop it cleanly on Ctrl-C.

It prepares what a fresh clone lacks (a JWT key pair under .run/, the admin account, the
demo catalog), starts the instances the topology file names (``MESH_TOPOLOGY``, default
deploy/local.toml; services/topology.py) each as its own process, waits until each reports
SERVING, prints the commands to try, and on Ctrl-C or SIGTERM stops the processes it started,
by PID. While it runs, a process that dies is restarted on the same port with capped
exponential backoff, and given up on only after a crash loop (services/supervisor.py): one
dead instance never stops the shop. Operators change the running shop with ``mesh scale`` and
``mesh restart`` through its control endpoint (services/fleet.py, services/control.py).

A topology file's ``[apps.<name>]`` tables (services/topology_apps.py) are a team's own
services: each gets its identity and intentions, starts after the shop's services, is
supervised like them, and has its proto modules and public methods added to the gateway's, so
its http rules are REST routes at once (docs/guide.md).

Identities mean something only with Consul ACLs on (without them the agent hands a Connect
certificate for any name to any local process). So the Consul dev agent the launcher starts
enforces ACLs with default deny, and the launcher applies the shop's mesh policy
(services/mesh_policy.py) with the agent's master token, which it keeps to itself: one token
per identity in ``.run/tokens/<identity>`` (0600), and the intentions the shop needs, the rest
denied. Each child gets ``CONSUL_HTTP_TOKEN_FILE`` naming its own identity's file, never the
master token nor the launcher's ``CONSUL_HTTP_TOKEN``. An agent already running at
``CONSUL_HTTP_ADDR`` with ACLs on needs a management token from ``CONSUL_HTTP_TOKEN`` (or
``CONSUL_HTTP_TOKEN_FILE``) to do the same.

Each service instance also gets ``MESH_HEALTH_PORT``: under mTLS its server answers
grpc.health.v1 in plaintext there (Consul 1.8.7's gRPC check has no client certificate), and
readiness is probed there. ``MESH_INSECURE=1`` (plaintext, for debugging) reaches every child,
and the launcher says loudly that it is on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from gateway.settings import DEFAULT_PROTO_MODULES, DEFAULT_PUBLIC_METHODS
from mesh.config import env_list
from mesh.connect.settings import INSECURE_WARNING, security_settings_from_env
from mesh.control import control_file_path
from mesh.errors import ConfigError
from mesh.health import wait_serving
from mesh.identity import generate_keypair
from mesh.registry.acl import ConsulAcl, ConsulAclError
from mesh.registry.dev_agent import ConsulDevAgent, PortAllocator, consul_answers, find_consul
from mesh.server.runtime import EXIT_PORT_UNAVAILABLE
from services import mesh_policy
from services.common.messaging.topology import broker_address
from services.common.settings import DEFAULT_PORTS, messaging_settings_from_env
from services.control import ControlServer
from services.fleet import Fleet
from services.supervisor import Slot, Supervisor
from services.topology import DEFAULT_TOPOLOGY, SERVICES, TopologyError, load_topology
from services.topology_apps import App

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
LOG_DIR = RUN_DIR / "logs"
TOKEN_DIR = RUN_DIR / "tokens"
START_ORDER = SERVICES  # user first (it issues tokens), order last (it calls the rest)
DEFAULT_CONSUL = "127.0.0.1:8500"
TOKEN_VARIABLES = ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE")
GATEWAY_PORT = 8080
XDS_PORT = 18000
DASHBOARD_PORT = 8081
XDS_BOOTSTRAP = RUN_DIR / "xds-bootstrap.json"


@dataclass
class Child:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    respawn: Callable[[], subprocess.Popen[bytes]]
    """Start it again the same way, on the same port (the supervisor calls it after a death)."""
    ready: Callable[[subprocess.Popen[bytes]], None]
    """Block until this process serves (its health check); raise if it does not."""
    health_port: int = 0
    """Under mTLS, the port of its plaintext health-only listener (0: none)."""
    address: str = "127.0.0.1"
    """Where it listens (one host: loopback)."""
    again: Callable[[], Child] | None = None
    """Start a replacement on ports chosen afresh (None: none of its ports is the launcher's choice)."""


class LaunchError(Exception):
    """The shop cannot start as configured; the message says what is missing."""


@dataclass(frozen=True)
class Mesh:
    """The Consul agent the shop uses, and the identities' token files on it."""

    consul: str
    token: str = field(repr=False)
    """The launcher's own (management) token, for its own reads; never given to a child."""
    token_files: dict[str, Path] = field(default_factory=dict)
    """Each identity's token file; empty when the agent runs without ACLs."""
    ports: PortAllocator = field(default_factory=PortAllocator, repr=False, compare=False)
    """Every port this run hands to a child, so that none is handed out twice."""

    def child_env(self, env: dict[str, str], identity: str) -> dict[str, str]:
        """``env`` for a child running as ``identity``: its own token file and no other token."""
        child = {k: v for k, v in env.items() if k not in TOKEN_VARIABLES}
        if self.token_files:
            child["CONSUL_HTTP_TOKEN_FILE"] = str(self.token_files[identity])
        return child


def shown(path: Path) -> str:
    """``path`` as a person at the project root types it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _no_wait(process: subprocess.Popen[bytes]) -> None:
    """Readiness for what is ready once started (the Consul agent's start waits for a leader)."""


CLI_CERT_DIR = ".run/certs/cli"  # where the README's grpcurl lines keep the "cli" identity's files


def try_lines(
    ports: dict[str, int], host: str = "localhost", *, mtls: bool = True, cli_token: str = ".run/tokens/cli"
) -> list[str]:
    """The grpcurl commands printed at start and shown in the README, for these ports.

    Under mTLS grpcurl presents the "cli" identity's certificate, which ``mesh cert`` fetches
    with that identity's token. The bundled grpcurl (1.8.6) cannot verify a server certificate
    whose only SAN is a SPIFFE URI, so these lines skip verifying the server (``-insecure``);
    the mesh's own clients do verify it. Plaintext (``MESH_INSECURE=1``) needs neither.
    """
    user, inventory, order = (f"{host}:{ports[n]}" for n in ("user", "inventory", "order"))
    if mtls:
        token = f"CONSUL_HTTP_TOKEN_FILE={cli_token} " if cli_token else ""
        setup = [
            f"{token}mesh cert --client cli --out {CLI_CERT_DIR}",
            f'MTLS="-insecure -cert {CLI_CERT_DIR}/cert.pem -key {CLI_CERT_DIR}/key.pem"',
        ]
        how = "$MTLS"
    else:
        setup, how = [], "-plaintext"
    return [
        *setup,
        f"grpcurl {how} {inventory} list",
        f"grpcurl {how} {inventory} describe shop.inventory.v1.InventoryService",
        f"grpcurl {how} -d '{{\"page_size\": 3}}' {inventory} shop.inventory.v1.InventoryService/ListProducts",
        f'grpcurl {how} -d \'{{"email": "ada@example.com", "password": "correct-horse-9", '
        f'"display_name": "Ada", "request_id": "signup-ada"}}\' {user} shop.user.v1.UserService/CreateUser',
        f'TOKEN=$(grpcurl {how} -d \'{{"email": "ada@example.com", "password": "correct-horse-9"}}\' '
        f"{user} shop.user.v1.UserService/Login | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        f'grpcurl {how} -H "authorization: Bearer $TOKEN" -d \'{{"items": [{{"sku": "TEA-SENCHA", '
        f'"quantity": 2}}], "shipping_address": {{"recipient": "Ada", "line1": "1-1 Chiyoda", '
        f'"city": "Tokyo", "postal_code": "100-0001", "country_code": "JP"}}, "request_id": "order-1"}}\' '
        f"{order} shop.order.v1.OrderService/CreateOrder",
        f'grpcurl {how} -H "authorization: Bearer $TOKEN" {order} shop.order.v1.OrderService/ListOrders',
    ]


def prepare(environ: dict[str, str]) -> dict[str, str]:
    """The environment every child gets: keys and data under .run/ unless already configured.

    Consul tokens are left out: each child gets its own identity's (:meth:`Mesh.child_env`).
    """
    env = {k: v for k, v in environ.items() if k not in TOKEN_VARIABLES}
    keys = RUN_DIR / "keys"
    if not (keys / "jwt-private.pem").exists():
        generate_keypair(keys, "jwt")  # users' tokens; services trust each other by mTLS identity
    env.setdefault("MESH_JWT_PRIVATE_KEY_FILE", str(keys / "jwt-private.pem"))
    env.setdefault("MESH_JWT_PUBLIC_KEY_FILE", str(keys / "jwt-public.pem"))
    env.setdefault("MESH_DATA_DIR", str(RUN_DIR / "data"))
    env.setdefault("INVENTORY_SEED_DEMO", "1")
    env["PYTHONPATH"] = str(ROOT)
    return env


def broker_line(env: dict[str, str], timeout: float = 1.0) -> str:
    """One line saying whether RabbitMQ answers at the configured URL (never its credentials).

    The shop starts either way: without a broker, order events wait in the order service's
    outbox and leave once one answers.
    """
    messaging = messaging_settings_from_env(env)
    if not messaging.enabled:
        return "  rabbitmq   off (SHOP_AMQP_URL=none): order events stay in the outbox"
    address = broker_address(messaging.amqp_url)
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError:
        return (
            f"  rabbitmq   {address}  NOT ANSWERING: order events wait in the outbox until it does "
            "(tools/ensure-rabbitmq.sh starts one)"
        )
    return f"  {'rabbitmq':<10} {address}  answers (exchange {messaging.exchange})"


def tied_to_launcher() -> list[str]:
    """The command prefix that asks Linux for SIGTERM should the launcher die (even by SIGKILL).

    The children run in their own session, so without it a killed launcher would leave the
    whole shop running with nobody to stop it. util-linux's ``setpriv --pdeathsig`` sets the
    signal and execs the command, so the PID stays the child's own.

    Not a ``preexec_fn`` doing the prctl: one makes CPython fork() where it would vfork(), and
    fork() runs gRPC's fork handlers in the child. grpcio 1.8x restarts its poller thread
    there, subprocess then closes that poller's epoll descriptor before exec, and the child
    aborts ("epoll_wait error: Bad file descriptor", grpc/grpc#43055). The launcher holds gRPC
    channels while it starts children (readiness probes, restarts): about one start in a few
    hundred died so.
    """
    if sys.platform != "linux":
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise LaunchError(
            "setpriv (util-linux) is not on PATH: the launcher ties its children to its life with it"
        )
    return [setpriv, "--pdeathsig", "TERM"]


def spawn(
    module: str,
    env: dict[str, str],
    log_name: str,
    *,
    log_dir: Path = LOG_DIR,
    host: Sequence[str] = (),
    args: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start ``python -m module [args]`` in its own session, tied to the launcher's life.

    Its JSON logs go to ``<log_dir>/<log_name>.log`` (``.run/logs``) so the terminal keeps only
    what a person needs to try the shop. ``host`` prefixes the command to run it on another
    host (``ip netns exec <namespace>``, which execs: the PID is still the service's own).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"{log_name}.log", "ab") as log:
        # Own session: a terminal's Ctrl-C reaches only the launcher, which then sends each
        # child exactly one SIGTERM (a second signal would make a child skip its drain).
        return subprocess.Popen(
            [*tied_to_launcher(), *host, sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start_consul(
    env: dict[str, str],
    children: list[Child],
    bootstrap_token: str = "",
    policy: mesh_policy.MeshPolicy = mesh_policy.SHOP,
) -> Mesh:
    """Use the Consul agent at CONSUL_HTTP_ADDR, or start a dev agent there and own it.

    Either way the mesh policy (the shop's, plus any apps') is applied to it (tokens under
    .run/tokens, intentions). ``bootstrap_token`` is the operator's management token for an
    agent already running.
    """
    address = env.get("CONSUL_HTTP_ADDR", DEFAULT_CONSUL)
    if consul_answers(address):
        print(f"  {'consul':<10} {address}  (already running)", flush=True)
        return use_running_consul(address, bootstrap_token, policy)
    port = int(address.rsplit(":", 1)[1]) if ":" in address else 8500
    RUN_DIR.mkdir(exist_ok=True)
    # ACLs on, default deny: the master token stays in this process (and the agent).
    agent = ConsulDevAgent(find_consul(ROOT), RUN_DIR / "consul.log", ports={"http": port}, acls=True)
    token_files: dict[str, Path] = {}

    def restart_agent() -> subprocess.Popen[bytes]:
        # Same ports and master token, empty catalog and ACL store: the policy is applied again
        # with the same token secrets (the files the children hold), then each service's
        # registrar re-registers (anti-entropy). Blocks a few seconds of the supervisor's loop.
        try:
            agent.start(new_session=True, command_prefix=tied_to_launcher())
            token_files.update(mesh_policy.apply(agent.http_addr, agent.master_token, TOKEN_DIR, policy))
        except (KeyboardInterrupt, ConsulAclError):  # no Child holds this agent yet
            agent.stop()
            raise
        assert agent.process is not None
        return agent.process

    children.append(Child("consul", port, restart_agent(), restart_agent, _no_wait))
    assert agent.process is not None
    print(
        f"  {'consul':<10} 127.0.0.1:{port}  pid {agent.process.pid}  READY"
        f"  (ACLs on, default deny; tokens in {shown(TOKEN_DIR)}/)",
        flush=True,
    )
    return Mesh(f"127.0.0.1:{port}", agent.master_token, token_files)


def use_running_consul(
    address: str, bootstrap_token: str, policy: mesh_policy.MeshPolicy = mesh_policy.SHOP
) -> Mesh:
    """Apply the shop's mesh policy to an agent the launcher does not own, with the operator's token."""
    acl = ConsulAcl(address, bootstrap_token)
    if not acl.acl_enabled():
        print(
            f"  !!! consul at {address} runs WITHOUT ACLs: any local process can get a certificate "
            "for any service name, so mesh identities prove nothing there !!!",
            flush=True,
        )
        mesh_policy.apply_intentions(acl, policy)
        return Mesh(address, bootstrap_token, {})
    if not bootstrap_token:
        raise LaunchError(
            f"the Consul agent at {address} is already running with ACLs on, and the launcher has no "
            "token to create the shop's ACL tokens and intentions with: set CONSUL_HTTP_TOKEN (or "
            "CONSUL_HTTP_TOKEN_FILE) to a management token for that agent, or point CONSUL_HTTP_ADDR "
            "at a free port and the launcher starts an agent of its own"
        )
    if not acl.token_works():
        raise LaunchError(
            f"the Consul agent at {address} does not know the token in CONSUL_HTTP_TOKEN "
            "(or CONSUL_HTTP_TOKEN_FILE): it needs a management token for that agent"
        )
    try:
        token_files = mesh_policy.apply(address, bootstrap_token, TOKEN_DIR, policy)
    except ConsulAclError as error:
        if error.status == 403:
            raise LaunchError(
                f"the token in CONSUL_HTTP_TOKEN (or CONSUL_HTTP_TOKEN_FILE) may not create ACL "
                f'policies, tokens and intentions on {address} (it needs acl = "write", as a '
                f"management token has): {error}"
            ) from None
        raise
    print(f"  {'':<10} ACLs on: tokens in {shown(TOKEN_DIR)}/, intentions applied", flush=True)
    return Mesh(address, bootstrap_token, token_files)


def start_services(
    env: dict[str, str], mesh: Mesh, children: list[Child], counts: Mapping[str, int], mtls: bool = True
) -> None:
    """Start ``counts[name]`` instances of each service, wait until each is SERVING and passing in Consul.

    Readiness is asked on the instance's health port under mTLS (the service port wants a
    client certificate), on its service port otherwise.
    """
    first = len(children)
    for name in START_ORDER:
        for instance in range(counts[name]):
            default = int(env.get(f"{name.upper()}_PORT", DEFAULT_PORTS[name]))
            children.append(start_instance(env, mesh, name, default if instance == 0 else None, mtls))
    await_started(mesh, children, first)


def start_apps(
    env: dict[str, str], mesh: Mesh, children: list[Child], apps: Sequence[App], mtls: bool = True
) -> None:
    """Start the team's own services (a topology file's ``[apps]``) as the shop's are started."""
    first = len(children)
    for app in apps:
        first_port = int(env.get(f"{app.name.upper().replace('-', '_')}_PORT", app.port))  # as INVENTORY_PORT
        for instance in range(app.instances):
            port = first_port if instance == 0 else None
            children.append(start_instance(env, mesh, app.name, port, mtls, app))
    if apps:
        await_started(mesh, children, first)


def await_started(mesh: Mesh, children: list[Child], first: int) -> None:
    """Wait until each instance from ``children[first]`` on serves (one that found a port taken
    is replaced in the list, see :func:`ready_or_again`), then until Consul has all passing."""
    for position in range(first, len(children)):
        child = children[position] = ready_or_again(children[position])
        health = f"  health 127.0.0.1:{child.health_port}" if child.health_port else ""
        print(
            f"  {child.name:<10} 127.0.0.1:{child.port}  pid {child.process.pid}  SERVING{health}", flush=True
        )
    wait_passing(mesh.consul, children[first:], timeout=60, token=mesh.token)


PORT_ATTEMPTS = 3
"""Starts of one instance, at most, while ports the launcher chose keep being taken."""


def _print_now(line: str) -> None:
    print(line, flush=True)


def _call(start: Callable[[], Child]) -> Child:
    return start()


def ready_or_again(
    child: Child,
    say: Callable[[str], None] = _print_now,
    spawn: Callable[[Callable[[], Child]], Child] = _call,
) -> Child:
    """``child`` once it serves; or, when it exited because a port was taken, a replacement on
    ports chosen afresh that serves (at most :data:`PORT_ATTEMPTS` starts in all).

    A port the launcher picks is free when probed, but another process can take it in the
    second before the child binds it (seen in CI: "Failed to bind to address"). Such a child
    exits with EXIT_PORT_UNAVAILABLE. A port the operator set is never changed: if that one is
    taken, every start fails alike and the last failure, naming the address, is raised.
    ``say`` hears that a replacement is started; ``spawn(start)`` runs its start (the fleet's
    does so on its supervisor's thread and keeps the process).
    """
    for _ in range(PORT_ATTEMPTS - 1):
        try:
            child.ready(child.process)
            return child
        except LaunchError:
            if child.again is None or child.process.poll() != EXIT_PORT_UNAVAILABLE:
                raise
            taken = f"127.0.0.1:{child.port} or its health port"
            say(f"  {child.name:<10} {taken} was taken before it bound it; trying other ports")
        child = spawn(child.again)
    child.ready(child.process)
    return child


def start_instance(
    env: dict[str, str],
    mesh: Mesh,
    name: str,
    port: int | None = None,
    mtls: bool = True,
    app: App | None = None,
) -> Child:
    """Spawn one instance of service ``name`` (``python -m services.<name>``, or an app's
    module with its paths first on PYTHONPATH) on ``port`` (None: a free one) and a free
    health port; no waiting."""
    again = partial(start_instance, env, mesh, name, port, mtls, app)
    port = mesh.ports.take() if port is None else port
    health_port = mesh.ports.take()
    child_env = dict(mesh.child_env(env, name), MESH_PORT=str(port), MESH_HEALTH_PORT=str(health_port))
    if name != "user":
        child_env.pop("MESH_JWT_PRIVATE_KEY_FILE", None)  # only the issuer signs user tokens
    module = f"services.{name}"
    if app is not None:
        module = app.module
        child_env["PYTHONPATH"] = python_path(child_env, app.pythonpath)
    respawn = partial(spawn, module, child_env, f"{name}-{port}")
    probed = health_port if mtls else port
    ready = partial(_wait_serving, f"127.0.0.1:{probed}", LOG_DIR / f"{name}-{port}.log")
    return Child(name, port, respawn(), respawn, ready, health_port if mtls else 0, again=again)


LOG_TAIL_LINES = 5


def _wait_serving(address: str, log: Path, process: subprocess.Popen[bytes]) -> None:
    """Wait until it serves; when it dies or hangs instead, say so with the end of its log."""
    try:
        wait_serving(address, timeout=120, process=process)
    except (RuntimeError, TimeoutError) as error:
        raise start_failure(address, process, error, log) from None


def start_failure(what: str, process: subprocess.Popen[bytes], error: Exception, log: Path) -> LaunchError:
    """``what`` did not start: the error with the end of its log, which says why."""
    try:
        tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    except OSError:
        tail = []
    shown_tail = "".join(f"\n    {line}" for line in tail)
    return LaunchError(f"{what} (pid {process.pid}): {error}; the end of {shown(log)}:{shown_tail}")


def wait_passing(
    consul: str, children: Sequence[Slot], timeout: float, token: str = "", *, quiet: bool = False
) -> None:
    """Poll Consul until every started instance's gRPC health check is passing.

    With ACLs on, ``token`` must read services and nodes (an anonymous query sees no rows).
    """
    url = consul if "//" in consul else f"http://{consul}"
    headers = {"X-Consul-Token": token} if token else {}
    wanted = {(c.name, c.port) for c in children}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        passing = set()
        for name in {c.name for c in children}:
            query = urllib.request.Request(f"{url}/v1/health/service/{name}?passing=1", headers=headers)
            with urllib.request.urlopen(query, timeout=2) as reply:
                passing |= {(name, row["Service"]["Port"]) for row in json.loads(reply.read())}
        if wanted <= passing:
            if not quiet:
                print(f"  every instance passing in Consul ({len(wanted)})", flush=True)
            return
        time.sleep(0.2)  # poll interval
    raise TimeoutError(f"not passing in Consul after {timeout}s: {sorted(wanted - passing)}")


def python_path(env: Mapping[str, str], first: Sequence[Path]) -> str:
    """``PYTHONPATH`` with ``first`` ahead of what ``env`` already has."""
    return os.pathsep.join(
        [*(str(p) for p in first), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    )


def gateway_app_env(env: Mapping[str, str], apps: Sequence[App]) -> dict[str, str]:
    """What the gateway needs to serve the apps' REST routes: their proto modules (and where
    to import them from) and their public methods, added to its own defaults."""
    if not apps:
        return {}
    modules = env_list(env, "GATEWAY_PROTO_MODULES") or DEFAULT_PROTO_MODULES
    public = env_list(env, "GATEWAY_PUBLIC_METHODS") or DEFAULT_PUBLIC_METHODS
    return {
        "GATEWAY_PROTO_MODULES": ",".join(
            dict.fromkeys([*modules, *(m for app in apps for m in app.protos)])
        ),
        "GATEWAY_PUBLIC_METHODS": ",".join(
            dict.fromkeys([*public, *(m for app in apps for m in app.public)])
        ),
        "PYTHONPATH": python_path(env, [path for app in apps for path in app.pythonpath]),
    }


def start_gateway(
    env: dict[str, str], mesh: Mesh, services: dict[str, int], children: list[Child], apps: Sequence[App] = ()
) -> int:
    """Start the REST gateway in front of the services (and apps); wait until /readyz answers 200."""
    port = int(env.get("GATEWAY_PORT", GATEWAY_PORT))
    # The edge holds no signing key: it is the mesh identity "gateway", nothing more.
    gateway_env = {
        k: v for k, v in mesh.child_env(env, "gateway").items() if not k.endswith("PRIVATE_KEY_FILE")
    }
    gateway_env.update(
        {f"GATEWAY_UPSTREAM_{n.upper()}": f"127.0.0.1:{p}" for n, p in services.items() if n in SERVICES}
    )
    gateway_env.update(gateway_app_env(gateway_env, apps))
    gateway_env["GATEWAY_PORT"] = str(port)
    respawn = partial(spawn, "gateway", gateway_env, f"gateway-{port}")
    process = respawn()
    ready = partial(_wait_ready, f"http://127.0.0.1:{port}/readyz")
    children.append(Child("gateway", port, process, respawn, ready))
    ready(process)
    print(f"  {'gateway':<10} 127.0.0.1:{port}  pid {process.pid}  READY", flush=True)
    return port


def start_dashboard(env: dict[str, str], mesh: Mesh, children: list[Child]) -> int:
    """Start ``mesh dashboard`` before the services, and point every later child's traces at it.

    The dashboard reads only what the mesh exposes (Consul, each instance's /metrics, OTLP),
    as the ``dashboard`` identity (read on services and nodes). Its OTLP receiver's port is
    chosen here so the services and the gateway, started after it, export their spans there
    (``OTEL_EXPORTER_OTLP_ENDPOINT``), unless the environment already names an exporter.
    """
    port = int(env.get("MESH_DASHBOARD_PORT", DASHBOARD_PORT))
    otlp_port = int(env.get("MESH_DASHBOARD_OTLP_PORT", "0")) or mesh.ports.take()
    dashboard_env = dict(
        mesh.child_env(env, "dashboard"),
        MESH_DASHBOARD_PORT=str(port),
        MESH_DASHBOARD_OTLP_PORT=str(otlp_port),
        MESH_DASHBOARD_REGISTER="1",  # found in Consul as `dashboard`, with its OTLP port in meta
    )
    respawn = partial(spawn, "mesh.dashboard", dashboard_env, f"dashboard-{port}")
    ready = partial(_wait_ready, f"http://127.0.0.1:{port}/healthz")
    process = respawn()
    children.append(Child("dashboard", port, process, respawn, ready))
    ready(process)
    if not any(key in env for key in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{otlp_port}"
        env.setdefault("OTEL_BSP_SCHEDULE_DELAY", "1000")  # spans on the page within a second
    print(
        f"  {'dashboard':<10} http://127.0.0.1:{port}/  pid {process.pid}  (traces: OTLP 127.0.0.1:{otlp_port})",
        flush=True,
    )
    return port


def start_xds(env: dict[str, str], mesh: Mesh, children: list[Child], mtls: bool) -> int:
    """Start ``mesh xds``, the control plane for xDS clients; wait until it serves.

    It reads the catalog as the ``xds`` identity and writes the bootstrap file local clients
    name in ``GRPC_XDS_BOOTSTRAP``. Under mTLS it also keeps the ``cli`` identity's
    certificate files fresh for them (the bootstrap's file-watcher provider reads them), so a
    plain grpcio or Node client reaches the shop as ``cli``, as grpcurl does.
    """
    port = int(env.get("MESH_XDS_PORT", XDS_PORT))
    bootstrap = xds_bootstrap_path(env)
    xds_env = dict(mesh.child_env(env, "xds"), MESH_XDS_PORT=str(port))
    args = ["--bootstrap-out", str(bootstrap)]
    if mtls and "cli" in mesh.token_files:
        args += ["--client-identity", "cli", "--client-token-file", str(mesh.token_files["cli"])]
        args += ["--client-certs", str(bootstrap.parent / "xds-certs")]
    respawn = partial(spawn, "mesh.xds", xds_env, f"xds-{port}", args=args)
    ready = partial(_wait_xds, f"127.0.0.1:{port}", LOG_DIR / f"xds-{port}.log", bootstrap)
    bootstrap.unlink(missing_ok=True)  # a file left by an earlier run is no sign of readiness
    process = respawn()
    children.append(Child("xds", port, process, respawn, ready))
    ready(process)
    print(
        f"  {'xds':<10} 127.0.0.1:{port}  pid {process.pid}  SERVING  (bootstrap {shown(bootstrap)})",
        flush=True,
    )
    return port


def _wait_xds(address: str, log: Path, bootstrap: Path, process: subprocess.Popen[bytes]) -> None:
    """Serving, and the bootstrap written (it is written right after the server starts)."""
    _wait_serving(address, log, process)
    deadline = time.monotonic() + 30
    while not bootstrap.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise start_failure(address, process, RuntimeError(f"no bootstrap file {shown(bootstrap)}"), log)
        time.sleep(0.05)  # poll interval


def xds_bootstrap_path(env: Mapping[str, str]) -> Path:
    """Where ``mesh xds`` writes the bootstrap for local clients: ``MESH_XDS_BOOTSTRAP``, else .run/."""
    return Path(env.get("MESH_XDS_BOOTSTRAP", "") or XDS_BOOTSTRAP)


def xds_lines(bootstrap: Path = XDS_BOOTSTRAP) -> list[str]:
    """The xDS client lines printed at start and shown in the README: no tsunagu import in either."""
    return [
        f"GRPC_XDS_BOOTSTRAP={shown(bootstrap)} .venv/bin/python examples/xds/list_products.py",
        f"GRPC_XDS_BOOTSTRAP={shown(bootstrap)} NODE_PATH=.tools/node_modules node examples/xds/list_products.js",
    ]


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    wait_ready(url, process, timeout=120)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll an HTTP readiness endpoint until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)  # poll interval
    raise TimeoutError(f"{url} not ready after {timeout}s")


def curl_lines(port: int, host: str = "localhost") -> list[str]:
    """The REST walk-through printed at start and shown in the README, for this port."""
    address = json.dumps(
        {
            "recipient": "Ada",
            "line1": "1-1 Chiyoda",
            "city": "Tokyo",
            "postalCode": "100-0001",
            "countryCode": "JP",
        }
    )
    order = json.dumps(
        {
            "items": [{"sku": "TEA-MATCHA", "quantity": 1}],
            "shippingAddress": json.loads(address),
            "requestId": "order-2",
        }
    )
    return [
        f"G=http://{host}:{port}",
        "curl -s -X POST $G/v1/users -H 'Content-Type: application/json' "
        '-d \'{"email": "grace@example.com", "password": "correct-horse-9", '
        '"displayName": "Grace", "requestId": "signup-grace"}\'',
        "TOKEN=$(curl -s -X POST $G/v1/users:login -H 'Content-Type: application/json' "
        '-d \'{"email": "grace@example.com", "password": "correct-horse-9"}\' '
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"accessToken\"])')",
        'curl -s "$G/v1/products?pageSize=3"',
        'ORDER=$(curl -s -X POST $G/v1/orders -H "Authorization: Bearer $TOKEN" '
        f"-H 'Content-Type: application/json' -d '{order}' "
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"orderId\"])')",
        'curl -s $G/v1/orders/$ORDER -H "Authorization: Bearer $TOKEN"',
        'curl -s $G/v1/orders -H "Authorization: Bearer $TOKEN"',
        'curl -sN $G/v1/orders/$ORDER:watch -H "Authorization: Bearer $TOKEN"',
        # Issued by payment's billing consumer from the order.confirmed event (a moment later).
        'curl -s $G/v1/invoices -H "Authorization: Bearer $TOKEN"',
        'curl -s $G/v1/notifications -H "Authorization: Bearer $TOKEN"',
    ]


def stop(children: list[Child], grace: float = 15.0) -> None:
    """SIGTERM each child still running (by PID), wait for the drain, SIGKILL stragglers."""
    for child in reversed(children):
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM to the launcher stops the shop the same way Ctrl-C does."""
    raise KeyboardInterrupt


def main() -> int:
    try:
        # MESH_INSECURE, and the operator's token for a Consul agent the launcher does not start.
        security = security_settings_from_env(os.environ)
    except ConfigError as error:
        print(f"cannot start: {error}", file=sys.stderr)
        return 1
    try:
        topology = load_topology(ROOT / os.environ.get("MESH_TOPOLOGY", str(DEFAULT_TOPOLOGY)))
    except TopologyError as error:
        print(f"cannot start: {error}", file=sys.stderr)
        return 1
    if not topology.single_host:
        print(
            f"cannot start: {shown(topology.path)} places the shop on {len(topology.hosts)} hosts; "
            "`make run` runs a single-host topology (deploy/local.toml)",
            file=sys.stderr,
        )
        return 1
    env = prepare(dict(os.environ))  # MESH_INSECURE reaches every child; Consul tokens do not
    seeded = subprocess.run(
        [sys.executable, "-m", "services.user.seed_admin"], cwd=ROOT, env=env, check=False
    )
    if seeded.returncode != 0:
        print("could not seed the admin account", file=sys.stderr)
        return 1
    print("starting the shop:", flush=True)
    children: list[Child] = []
    control: ControlServer | None = None
    # Where `mesh scale/restart/instances` find this launcher: $MESH_CONTROL_FILE, else .run/control.json.
    control_file = ROOT / control_file_path(dict(os.environ))
    signal.signal(signal.SIGTERM, interrupt)
    # Started as a background job of a non-interactive shell (a CI script, nohup), a process
    # inherits SIGINT ignored and Python then never raises KeyboardInterrupt: Ctrl-C (or a
    # test's SIGINT) must stop the shop however the launcher was started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if security.insecure:
            print(f"\n  !!! {INSECURE_WARNING} !!!\n", flush=True)
        print(broker_line(env), flush=True)  # SHOP_AMQP_URL / SHOP_EVENTS_NAMESPACE reach every child
        policy = mesh_policy.with_apps(mesh_policy.SHOP, topology.apps)
        mesh = start_consul(env, children, security.consul_token, policy)
        env["CONSUL_HTTP_ADDR"] = mesh.consul
        dashboard_port = start_dashboard(env, mesh, children)  # first: the services' traces go to it
        start_services(
            env, mesh, children, {name: topology.count(name) for name in START_ORDER}, security.mtls
        )
        start_apps(env, mesh, children, topology.apps, security.mtls)
        ports = {c.name: c.port for c in reversed(children)}  # the first instance of each
        gateway_port = start_gateway(env, mesh, ports, children, topology.apps)
        start_xds(env, mesh, children, security.mtls)
        cli_token = shown(mesh.token_files["cli"]) if "cli" in mesh.token_files else ""
        lines = ["source .venv/bin/activate", *try_lines(ports, mtls=security.mtls, cli_token=cli_token)]
        print("\ntry gRPC (in another terminal):\n" + "\n".join(f"  {line}" for line in lines), flush=True)
        rest = curl_lines(gateway_port)
        print("\ntry REST through the gateway:\n" + "\n".join(f"  {line}" for line in rest), flush=True)
        print(
            "\ntry xDS (any gRPC client, no tsunagu import):\n"
            + "\n".join(f"  {line}" for line in xds_lines(xds_bootstrap_path(env))),
            flush=True,
        )
        status = ".venv/bin/mesh status"
        if mesh.token_files:  # with ACLs on, an anonymous query sees no service: read as "cli"
            status = f"CONSUL_HTTP_TOKEN_FILE={shown(mesh.token_files['cli'])} {status}"
        print(f"\nwhat Consul knows: {status}", flush=True)
        print(
            f"see it live: http://127.0.0.1:{dashboard_port}/ · {status.replace('status', 'top')}"
            " · Prometheus: deploy/prometheus/prometheus.yml",
            flush=True,
        )
        print(f"logs (one JSON line per RPC): {LOG_DIR.relative_to(ROOT)}/", flush=True)
        print(
            "\nan instance that dies is restarted (after 1 s, 2 s, 4 s … 30 s); a crash loop is given up on"
        )
        say = partial(print, flush=True)
        supervisor = Supervisor(say=say)
        apps = {app.name: app for app in topology.apps}
        for child in children:
            supervisor.watch(child, child.respawn, child.ready)
        fleet = Fleet(
            supervisor,
            children,
            lambda name: start_instance(env, mesh, name, None, security.mtls, apps.get(name)),
            partial(wait_passing, mesh.consul, timeout=60, token=mesh.token, quiet=True),
            (*START_ORDER, *apps),
            say=say,
            serve=ready_or_again,
        )
        control = ControlServer(fleet, say=say)
        control.start(control_file)
        print(
            "change it while it runs: .venv/bin/mesh scale inventory 3 · .venv/bin/mesh restart payment"
            f" · .venv/bin/mesh instances  (control endpoint {control.url}, secret in {shown(control_file)})"
        )
        print("Ctrl-C stops everything.", flush=True)
        supervisor.run()  # until Ctrl-C or SIGTERM, or nothing is left to supervise
        print("every instance was given up on: nothing left to serve", file=sys.stderr)
        return 1
    except (LaunchError, ConsulAclError) as error:  # each names what is missing or refused
        print(f"cannot start: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    finally:
        if control is not None:
            control.close()
            control_file.unlink(missing_ok=True)
        stop(children)


if __name__ == "__main__":
    sys.exit(main())
