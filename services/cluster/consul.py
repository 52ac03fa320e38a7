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

For tests and operators on the machine itself, :meth:`ConsulCluster.http` forwards a host's
agent API to a port on the machine's loopback (services/cluster/network.py, ``expose``).
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

from services.cluster.network import HostLink, Network

HTTP_PORT = 8500
GRPC_PORT = 8502


def agent_config(
    host: HostLink, servers: Sequence[HostLink], data_dir: Path, *, server: bool
) -> dict[str, Any]:
    """The agent's JSON configuration: a server of ``len(servers)``, or a client joining them."""
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
    return config


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
            config.write_text(json.dumps(agent_config(host, server_hosts, base / "data", server=server)))
            agent = Agent(host, server, config, base / "consul.log", self.binary)
            agent.start()
            self.network.expose(name, HTTP_PORT, root_ports[name])
            agent.http = f"http://127.0.0.1:{root_ports[name]}"
            self.agents[name] = agent
        return self

    def get(self, host: str, path: str, timeout: float = 2.0) -> Any:
        with urllib.request.urlopen(self.agents[host].http + path, timeout=timeout) as reply:
            return json.loads(reply.read())

    def put(self, host: str, path: str, body: Any, timeout: float = 5.0) -> None:
        request = urllib.request.Request(
            self.agents[host].http + path, data=json.dumps(body).encode(), method="PUT"
        )
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            reply.read()

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
