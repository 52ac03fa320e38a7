"""A real Consul cluster across the hosts of a :class:`~services.cluster.network.Network`.

Three (or five) hosts run Consul servers that elect a leader by Raft; every other host runs a
client agent that its own services register with, as Consul's reference architecture has it.
Each agent answers HTTP on its own host's loopback (127.0.0.1:8500: every namespace has its
own), so a service finds its agent where a service on a real host does. The agents gossip and
replicate over the hosts' addresses in the private subnet.

Two settings matter for failure tests: ``raft_multiplier = 1`` (Consul's production tuning:
a killed leader is replaced in about 2.5 s instead of 16) and ``retry_interval = 1s`` for
joining (the default 30 s would leave a restarted agent alone for half a minute). Connect is
on, since non-dev agents have it off unless told.

For tests and operators on the machine itself, each agent's API is forwarded to a port on the
machine's loopback (services/cluster/network.py, ``expose``).

With a ``master_token`` the cluster runs with ACLs on, default deny, the way the single-host
shop's dev agent does (services/launcher.py): the servers hold the master token in their
configuration (how Consul 1.8 bootstraps ACLs), and :meth:`ConsulCluster.grant_agent_tokens`
gives every agent a token of its own that may write only its own node (``node "<host>"``),
set through the agent API and persisted in its data directory, so a restarted agent keeps it.
``down_policy = "extend-cache"``: an agent that cannot reach a leader keeps resolving the
tokens it has cached (the services' own, which they use on every call) instead of denying
everything, so a leaderless cluster keeps serving what it knew; a token it never saw is denied
until a leader is back. ``"allow"`` would be the same for cached tokens and open the door to
unknown ones, ``"deny"`` would stop the running mesh on a Raft election.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.registry.acl import ConsulAcl, ConsulAclError
from services.cluster.network import HostLink, Network

HTTP_PORT = 8500
GRPC_PORT = 8502


def agent_config(
    host: HostLink, servers: Sequence[HostLink], data_dir: Path, *, server: bool, master_token: str = ""
) -> dict[str, Any]:
    """The agent's JSON configuration: a server of ``len(servers)``, or a client joining them.

    With ``master_token``, ACLs on (default deny); servers carry the master token itself.
    """
    config: dict[str, Any] = {
        "node_name": host.name,
        "datacenter": "dc1",
        "data_dir": str(data_dir),
        "bind_addr": host.address,
        "advertise_addr": host.address,
        "client_addr": "127.0.0.1",
        "ports": {"http": HTTP_PORT, "grpc": GRPC_PORT, "dns": -1},
        "retry_join": [s.address for s in servers if s.name != host.name]
        if server
        else [s.address for s in servers],
        "retry_interval": "1s",
        "connect": {"enabled": True},
        "disable_update_check": True,
        "log_level": "warn",
        "leave_on_terminate": True,
        # Gossip tuned for hosts one hop apart: probe every 500 ms, a probe unanswered after
        # 250 ms, failed after 3 suspicion rounds. Consul's defaults (1 s, 500 ms, 4) took 5-8 s
        # here to see a host cut off. Not tighter: a host busy for a second on a loaded machine
        # must not be declared dead (200 ms / 100 ms / 2 saw a cut in 0.95 s, with that risk).
        # The price of declaring a host dead rather than suspect: after healing, it rejoins on
        # serf's reconnect round (up to 30 s) instead of at once.
        "gossip_lan": {"probe_interval": "500ms", "probe_timeout": "250ms", "suspicion_mult": 3},
    }
    if server:
        config.update(server=True, bootstrap_expect=len(servers), performance={"raft_multiplier": 1})
    if master_token:
        acl: dict[str, Any] = {
            "enabled": True,
            "default_policy": "deny",
            "down_policy": "extend-cache",
            "enable_token_persistence": True,  # the agent token set by the API survives a restart
        }
        if server:
            acl["tokens"] = {"master": master_token}
        config["acl"] = acl
    return config


def node_policy_rules(node: str) -> str:
    """An agent's own rules: write its node (registration, anti-entropy), read services."""
    return f'node "{node}" {{ policy = "write" }}\nservice_prefix "" {{ policy = "read" }}'


@dataclass
class Agent:
    """One Consul agent process inside its host's namespace."""

    host: HostLink
    server: bool
    config: Path
    log: Path
    binary: str
    process: subprocess.Popen[bytes] | None = None
    http: str = ""
    """``http://127.0.0.1:<port>`` on the machine: this agent's API, forwarded."""

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.host.command([self.binary, "agent", "-config-file", str(self.config)]),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def signal(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)


@dataclass
class ConsulCluster:
    """Servers and client agents on the network's hosts; :meth:`stop` ends every agent by PID."""

    network: Network
    servers: Sequence[str]
    clients: Sequence[str]
    workdir: Path
    binary: str
    master_token: str = field(default="", repr=False)
    """ACLs on when set: the management token, kept by whoever runs the cluster, never logged."""
    agents: dict[str, Agent] = field(default_factory=dict)

    def start(self, root_ports: dict[str, int]) -> ConsulCluster:
        """Start every agent; each host's API on the machine's 127.0.0.1:``root_ports[host]``."""
        server_hosts = [self.network.hosts[name] for name in self.servers]
        for name in [*self.servers, *self.clients]:
            host = self.network.hosts[name]
            server = name in self.servers
            base = self.workdir / name
            base.mkdir(parents=True, exist_ok=True)
            config = base / "consul.json"
            text = json.dumps(
                agent_config(host, server_hosts, base / "data", server=server, master_token=self.master_token)
            )
            config.touch(mode=0o600)  # a server's file holds the master token: its owner reads it
            config.write_text(text)
            agent = Agent(host, server, config, base / "consul.log", self.binary)
            agent.start()
            self.network.expose(name, HTTP_PORT, root_ports[name])
            agent.http = f"http://127.0.0.1:{root_ports[name]}"
            self.agents[name] = agent
        return self

    def get(self, host: str, path: str, timeout: float = 2.0) -> Any:
        with urllib.request.urlopen(self._request(host, path), timeout=timeout) as reply:
            return json.loads(reply.read())

    def put(self, host: str, path: str, body: Any, timeout: float = 5.0) -> None:
        request = self._request(host, path, json.dumps(body).encode(), "PUT")
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            reply.read()

    def _request(
        self, host: str, path: str, data: bytes | None = None, method: str = "GET"
    ) -> urllib.request.Request:
        request = urllib.request.Request(self.agents[host].http + path, data=data, method=method)
        if self.master_token:
            request.add_header("X-Consul-Token", self.master_token)
        return request

    def wait_acl(self, within: float) -> None:
        """Poll until the leader has set ACLs up (the master token resolves); TimeoutError if not."""
        acl = ConsulAcl(self.agents[self.servers[0]].http, self.master_token, timeout=2.0)
        deadline = time.monotonic() + within
        while True:
            try:
                if acl.token_works():
                    return
            except ConsulAclError:
                pass  # no leader yet, or ACLs not yet initialised
            if time.monotonic() > deadline:
                raise TimeoutError(f"Consul ACLs not ready within {within:g} s")
            time.sleep(0.1)  # poll interval

    def grant_agent_tokens(self) -> None:
        """Give every agent a token that may write its own node (and read services), and set it."""
        acl = ConsulAcl(self.agents[self.servers[0]].http, self.master_token)
        for name in self.agents:
            policy = f"agent-{name}"
            acl.create_policy(policy, node_policy_rules(name), f"Consul agent of host {name}")
            secret = acl.create_token(policy, f"Consul agent of host {name}")
            self.put(name, "/v1/agent/token/agent", {"Token": secret})

    def leader(self, host: str) -> str:
        """The leader's ``address:8300`` as ``host``'s agent sees it; "" when it knows none."""
        try:
            answer = self.get(host, "/v1/status/leader")
        except (OSError, ValueError, urllib.error.URLError):
            return ""
        return answer if isinstance(answer, str) else ""

    def leader_host(self, asked: str) -> str:
        address = self.leader(asked).rsplit(":", 1)[0]
        return next((n for n in self.servers if self.network.hosts[n].address == address), "")

    def wait_leader(self, asked: Sequence[str], within: float, not_host: str = "") -> tuple[str, float]:
        """Poll until every host in ``asked`` names the same leader (not ``not_host``); it and the seconds taken."""
        started = time.monotonic()
        while time.monotonic() - started < within:
            seen = {self.leader_host(name) for name in asked}
            if len(seen) == 1 and (leader := seen.pop()) and leader != not_host:
                return leader, time.monotonic() - started
            time.sleep(0.05)  # poll interval
        raise TimeoutError(f"no common leader within {within:g} s: {[self.leader(n) for n in asked]}")

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM every agent at once, SIGKILL what has not left after ``grace`` seconds.

        A server leaving with no leader (or cut off) can wait a long time for an answer that
        never comes: one shared deadline, not one per agent.
        """
        for agent in self.agents.values():
            agent.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for agent in self.agents.values():
            if agent.process is None:
                continue
            try:
                agent.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                agent.process.kill()
                agent.process.wait()
