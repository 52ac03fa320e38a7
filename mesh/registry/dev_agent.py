"""A local Consul dev agent for ``make run`` and tests: started on loopback, ready when it has
a leader, Connect CA roots and answers the catalog (polled), stopped by its own PID.

``consul agent -dev`` keeps everything in memory, which is what a demo or a test wants: each
start is a clean registry, and several agents run side by side on free ports.

ACL mode (``ConsulDevAgent(..., acls=True)``): the agent starts with ACLs enabled and
``default_policy = "deny"``, so a token may do only what its policies grant (without ACLs the
agent hands a Connect leaf certificate for any name to any local process). The master
(bootstrap) token is generated here, kept in ``master_token`` and never logged or printed; it
reaches the agent in a config file readable by its owner only, deleted once the agent is
ready (``-hcl`` would show it to every local user in ``ps``). Facts from the 1.8.7 binary:

- without an agent token, the dev agent logs "Node info update blocked by ACLs" on every
  anti-entropy run; ``tokens { agent = <master> }`` makes its node sync clean;
- ``-dev`` keeps Connect enabled with ACLs on, and the roots endpoint needs no token;
- the leader initialises ACLs when elected; readiness also waits until ``/v1/acl/token/self``
  accepts the master token, so no caller races that (here it was accepted at once);
- the leader sets up the Connect CA after it is elected (a leaf request answers 500 until
  then, seen here): readiness waits until the roots endpoint lists a root;
- a restart forgets every policy, token and intention (memory only); the master token stays
  the same, so whoever created them creates them again (services/mesh_policy.py does).

Every request this module makes sends ``X-Consul-Token`` when the agent has a master token.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_SECONDS = 30.0
PORT_NAMES = ("http", "grpc", "serf_lan", "serf_wan", "server")
PORT_ATTEMPTS = 3
TOKEN_VARIABLES = ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE")


def find_consul(project_root: Path) -> str:
    """The consul binary: the project's own (.tools/bin), else on PATH, else installed now."""
    local = project_root / ".tools" / "bin" / "consul"
    if local.exists():
        return str(local)
    found = shutil.which("consul")
    if found:
        return found
    installed = subprocess.run(
        [str(project_root / "tools" / "install-consul.sh")], capture_output=True, text=True, check=False
    )
    if installed.returncode != 0:
        raise RuntimeError(f"tools/install-consul.sh failed:\n{installed.stderr}")
    return installed.stdout.strip().splitlines()[-1]


# Ports handed out to processes we start: below Linux's ephemeral range (32768-60999 by
# default), where the source ports of outgoing connections come from. A port picked there
# can be taken by any process's next connection before the server binds it (a launcher's
# instance failed to start so: "Failed to bind to address"); tests keep 10000-29999 to
# themselves (tests/support/processes.py).
CHOSEN_PORTS = (30000, 32768)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (see CHOSEN_PORTS)."""
    return free_ports(1)[0]


def free_ports(count: int, exclude: Collection[int] = ()) -> list[int]:
    """``count`` distinct ports on 127.0.0.1, each free for TCP and UDP a moment ago, none of
    them in ``exclude`` (ports already handed out whose processes may not have bound them yet).

    Every probe stays bound until all are chosen: probing one at a time lets the kernel hand
    the same ephemeral port out twice, and an agent given one port for serf LAN and WAN
    refuses to start. Serf listens on UDP too, so a port busy for UDP is passed over.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(count * 200):
            if len(ports) == count:
                return ports
            port = CHOSEN_PORTS[0] + secrets.randbelow(CHOSEN_PORTS[1] - CHOSEN_PORTS[0])
            if port in ports or port in exclude:
                continue
            tcp = socket.socket()
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held += (tcp, udp)
            try:
                tcp.bind(("127.0.0.1", port))
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
        if len(ports) == count:
            return ports
        raise RuntimeError(f"no {count} free ports in {CHOSEN_PORTS[0]}-{CHOSEN_PORTS[1] - 1}")
    finally:
        for probe in held:
            probe.close()


@dataclass
class PortAllocator:
    """Ports for the processes one launcher starts, never the same one twice.

    A probe in :func:`free_ports` is released at once, and the process it is for binds the port
    only once it has started, a second or so later: two picks a moment apart could meet on one
    port, and the later process fails ("Failed to bind to address", seen in CI when a launcher
    gave one payment instance's health port to another process). This remembers what it gave.
    """

    given: set[int] = field(default_factory=set)

    def take(self) -> int:
        """A free port this allocator has not handed out before."""
        port = free_ports(1, exclude=self.given)[0]
        self.given.add(port)
        return port


def acl_config(master_token: str) -> str:
    """The agent config (JSON) for ACLs on, default deny, with ``master_token`` as master and agent."""
    acl = {
        "enabled": True,
        "default_policy": "deny",
        "enable_token_persistence": False,
        # The agent's own token: its node registration and anti-entropy need node:write.
        "tokens": {"master": master_token, "agent": master_token},
    }
    return json.dumps({"acl": acl})


@dataclass
class ConsulDevAgent:
    """One ``consul agent -dev`` on loopback; restartable on the same ports (and master token)."""

    binary: str
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    acls: bool = False
    """ACLs enabled, default deny; ``master_token`` is generated when not given."""
    master_token: str = field(default="", repr=False)
    connect: bool = True
    """Connect (its CA) on, as ``-dev`` has it; off shows how the mesh refuses to start without it."""

    def __post_init__(self) -> None:
        if self.master_token:
            self.acls = True
        elif self.acls:
            self.master_token = str(uuid.uuid4())  # uuid4 draws from os.urandom

    @property
    def http_addr(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def assign_ports(self) -> dict[str, int]:
        """Give every port not set yet a free one, distinct from each other and from those set."""
        missing = [name for name in PORT_NAMES if name not in self.ports]
        fresh = free_ports(len(missing), exclude=set(self.ports.values()))
        self.ports.update(zip(missing, fresh, strict=True))
        return self.ports

    def start(self, new_session: bool = False, command_prefix: Sequence[str] = ()) -> ConsulDevAgent:
        """Start (or restart on the same ports) and wait until ready.

        ``command_prefix`` runs the agent through a command that execs it: a launcher ties the
        agent to its own life with one (``setpriv --pdeathsig``), as it does its other
        children, so a killed launcher leaves no agent behind.

        A port this start picked can be taken by another process between the probe and
        Consul's bind ("address already in use"); the agent is then started again with those
        ports picked afresh, up to PORT_ATTEMPTS times. Ports set by the caller, or kept from
        an earlier start, are never changed.
        """
        picked = [name for name in PORT_NAMES if name not in self.ports]
        for _ in range(PORT_ATTEMPTS - 1):
            self.assign_ports()
            logged = self.log_path.stat().st_size if self.log_path.exists() else 0
            try:
                return self._start_once(new_session, command_prefix)
            except RuntimeError:
                if not picked or b"address already in use" not in self.log_path.read_bytes()[logged:]:
                    raise
            for name in picked:
                del self.ports[name]
        self.assign_ports()
        return self._start_once(new_session, command_prefix)

    def _start_once(self, new_session: bool, command_prefix: Sequence[str]) -> ConsulDevAgent:
        binary = os.path.abspath(self.binary) if os.sep in self.binary else self.binary  # cwd below
        command = [*command_prefix, binary, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1"]
        for name in PORT_NAMES:
            command += [f"-{name.replace('_', '-')}-port", str(self.ports[name])]
        command += ["-dns-port", "-1", "-log-level", "warn"]
        if not self.connect:
            command += ["-hcl", "connect { enabled = false }"]
        config = self._write_acl_config() if self.acls else None
        try:
            if config is not None:
                command += ["-config-file", str(config)]
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    command,
                    # A dev agent reads "persisted" services from ./services: run it beside its
                    # log, not in the project root, whose services/ holds Python files.
                    cwd=self.log_path.parent,
                    # Its tokens come from its config, never from whoever started it.
                    env={k: v for k, v in os.environ.items() if k not in TOKEN_VARIABLES},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=new_session,
                )
            self._wait_ready()
        finally:
            if config is not None:  # read at start; a restart writes it again
                config.unlink(missing_ok=True)
        return self

    def _write_acl_config(self) -> Path:
        """The ACL config in a file only its owner reads (mkstemp creates it 0600)."""
        descriptor, name = tempfile.mkstemp(prefix="consul-acl-", suffix=".json")
        with os.fdopen(descriptor, "w") as config:
            config.write(acl_config(self.master_token))
        return Path(name)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"consul exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if not self.get("/v1/status/leader"):
                    last = "no leader yet"
                elif self.acls and not self._master_token_works():
                    last = "ACLs not initialised yet (the master token is refused)"
                elif self.connect and not self._connect_ca_ready():
                    last = "the Connect CA has no roots yet"
                else:
                    self.get("/v1/catalog/services")
                    return
            except (OSError, urllib.error.URLError) as error:
                last = repr(error)
            time.sleep(0.05)  # poll interval
        self.stop()
        raise RuntimeError(f"consul not ready after {START_TIMEOUT_SECONDS}s ({last}):\n{self.logs()}")

    def _connect_ca_ready(self) -> bool:
        # A leader is elected before it has set up the Connect CA: until then a leaf request
        # answers 500, and whoever starts a workload right away would have to retry.
        roots = self.get("/v1/agent/connect/ca/roots")
        return isinstance(roots, dict) and bool(roots.get("Roots"))

    def _master_token_works(self) -> bool:
        try:
            self.get("/v1/acl/token/self")
        except urllib.error.HTTPError as error:
            if error.code == 403:  # "ACL not found": ACLs not initialised (yet)
                return False
            raise
        return True

    def _request(self, path: str, method: str = "GET", data: bytes | None = None) -> urllib.request.Request:
        request = urllib.request.Request(self.http_addr + path, method=method, data=data)
        if self.master_token:
            request.add_header("X-Consul-Token", self.master_token)
        return request

    def get(self, path: str) -> object:
        """GET ``path`` (with the master token in ACL mode); its JSON body."""
        with urllib.request.urlopen(self._request(path), timeout=2) as response:
            return json.loads(response.read() or b"null")

    def put(self, path: str, body: object = None) -> object:
        """PUT ``path`` with ``body`` as JSON (with the master token in ACL mode); its JSON answer."""
        data = b"" if body is None else json.dumps(body).encode()
        with urllib.request.urlopen(self._request(path, "PUT", data), timeout=2) as response:
            return json.loads(response.read() or b"null")

    def passing(self, name: str) -> list[dict[str, object]]:
        """The passing instances of ``name`` (each row's ``Service`` object)."""
        rows = self.get(f"/v1/health/service/{name}?passing=1")
        assert isinstance(rows, list)
        return [row["Service"] for row in rows]

    def stop(self) -> None:
        """Kill the agent by its PID (a dev agent keeps nothing worth a graceful leave)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def consul_answers(address: str) -> bool:
    """Whether a Consul agent with a leader answers at ``address`` (host:port or URL)."""
    url = address if "//" in address else f"http://{address}"
    try:
        with urllib.request.urlopen(f"{url}/v1/status/leader", timeout=1) as response:
            return bool(json.loads(response.read() or b"null"))
    except (OSError, ValueError):
        return False
