"""``make cluster`` as a process another program drives: the cluster tests and bench/cluster.py.

:class:`ClusterProcess` starts ``python -m services.cluster`` with an environment of the
caller's, waits for its "Ctrl-C stops everything" line (every instance passing in Consul, the
gateway ready), and reads the state file it writes: each host's namespace, address, switch-side
link and Consul agent. The faults a test injects go through here, on things the run made:

- :meth:`partition` / :meth:`heal` take a host's switch-side link down and up;
- :meth:`kill_host` SIGKILLs every process inside a host's namespace (its agent, its instances,
  its forwards to PostgreSQL and RabbitMQ), as a host losing power;
- :meth:`kill_agent` / :meth:`start_agent` SIGKILL a host's Consul agent and start it again
  from its own configuration (an agent the run does not restart).

:meth:`stop` sends SIGINT, the Ctrl-C the README describes, and waits: the run removes its own
namespaces. The run's PID is in every namespace's name, so a stop that failed is swept later.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.registry.dev_agent import find_consul
from services.cluster.network import ip
from services.launcher import ROOT

READY_LINE = "Ctrl-C stops everything and removes every namespace."


@dataclass
class DrivenProcess:
    """A long-running command another program drives: started, read line by line, Ctrl-C'd.

    ``start`` returns once a line containing ``ready_line`` was printed; every line is kept in
    ``lines`` (a failure shows the last of them).
    """

    argv: list[str]
    env: dict[str, str]
    ready_line: str
    what: str
    """How errors name it ("make cluster", "make run")."""
    process: subprocess.Popen[str] | None = None
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def start(self, timeout: float = 240.0) -> DrivenProcess:
        self.process = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_for(self.ready_line, timeout)
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float, start: int = 0) -> int:
        """The index of the first line from ``start`` on containing ``text``; RuntimeError on exit or time."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            for index in range(start, len(self.lines)):
                if text in self.lines[index]:
                    return index
            if self.process.poll() is not None and not (self._reader and self._reader.is_alive()):
                raise RuntimeError(f"{self.what} exited with {self.process.returncode}:\n" + self.output())
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {text!r} from {self.what} within {timeout:g} s:\n" + self.output())
            time.sleep(0.1)  # poll interval

    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    def stop(self, timeout: float = 60.0) -> int:
        """Ctrl-C (SIGINT) and wait, SIGKILL after ``timeout``; the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader is not None:
            self._reader.join(5)
        return self.process.returncode


@dataclass
class ClusterProcess(DrivenProcess):
    """One ``python -m services.cluster`` run; ``env`` must set MESH_CLUSTER_STATE."""

    argv: list[str] = field(default_factory=lambda: [sys.executable, "-m", "services.cluster"])
    env: dict[str, str] = field(default_factory=dict)
    ready_line: str = READY_LINE
    what: str = "make cluster"
    state: dict[str, Any] = field(default_factory=dict)
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    """Agents started again by :meth:`start_agent` (ours to stop)."""

    def start(self, timeout: float = 240.0) -> ClusterProcess:
        super().start(timeout)
        self.state = json.loads(Path(self.env["MESH_CLUSTER_STATE"]).read_text())
        return self

    @property
    def gateway_port(self) -> int:
        return int(str(self.state["gateway"]).rsplit(":", 1)[1])

    @property
    def consul(self) -> str:
        """The forwarded API of the first Consul server, ``127.0.0.1:<port>``."""
        return str(self.state["consul"])

    def host(self, name: str) -> dict[str, Any]:
        return dict(self.state["hosts"][name])

    def token(self, identity: str) -> str:
        return (Path(self.state["tokens"]) / identity).read_text().strip()

    def partition(self, host: str) -> None:
        ip("link", "set", self.host(host)["link"], "down", namespace=self.state["switch"])

    def heal(self, host: str) -> None:
        ip("link", "set", self.host(host)["link"], "up", namespace=self.state["switch"])

    def pids(self, host: str) -> list[int]:
        return [int(pid) for pid in ip("netns", "pids", self.host(host)["namespace"]).split()]

    def kill_host(self, host: str) -> list[int]:
        """SIGKILL every process in ``host``'s namespace (again, until none is left); their PIDs."""
        killed: list[int] = []
        for _ in range(20):  # the run restarts instances meanwhile: kill those too, for a moment
            pids = self.pids(host)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)  # let the kernel reap before looking again
        return killed

    def kill_agent(self, host: str) -> int:
        """SIGKILL ``host``'s Consul agent (the one the run started, or ours); its PID."""
        agent = self.agents.pop(host, None)
        pid = agent.pid if agent is not None else int(self.host(host)["consul_pid"])
        os.kill(pid, signal.SIGKILL)
        if agent is not None:
            agent.wait()
        return pid

    def start_agent(self, host: str, log: Path) -> subprocess.Popen[bytes]:
        """Start ``host``'s agent again from its configuration, inside its namespace."""
        binary = find_consul(ROOT)
        with open(log, "ab") as out:
            agent = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.host(host)["namespace"],
                    binary,
                    "agent",
                    "-config-file",
                    self.host(host)["consul_config"],
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.agents[host] = agent
        return agent

    def stop(self, timeout: float = 60.0) -> int:
        """Ctrl-C (SIGINT) and wait; the run's exit code.

        The agents started again here are stopped first, and SIGKILLed if they linger (a server
        leaving a cluster can wait on peers): nothing here may keep the run from its Ctrl-C.
        """
        for agent in self.agents.values():
            if agent.poll() is None:
                agent.terminate()
                try:
                    agent.wait(10)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
        return super().stop(timeout)
