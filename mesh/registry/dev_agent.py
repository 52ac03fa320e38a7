"""A local Consul dev agent for ``make run`` and tests: started on loopback, ready when it has
a leader and answers the catalog (polled), stopped by its own PID.

``consul agent -dev`` keeps everything in memory, which is what a demo or a test wants: each
start is a clean registry, and several agents run side by side on free ports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

START_TIMEOUT_SECONDS = 30.0
PORT_NAMES = ("http", "grpc", "serf_lan", "serf_wan", "server")


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ConsulDevAgent:
    """One ``consul agent -dev`` on loopback; restartable on the same ports."""

    binary: str
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def http_addr(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def start(self, new_session: bool = False) -> ConsulDevAgent:
        """Start (or restart on the same ports) and wait until ready."""
        for name in PORT_NAMES:
            self.ports.setdefault(name, free_port())
        command = [self.binary, "agent", "-dev", "-bind", "127.0.0.1", "-client", "127.0.0.1"]
        for name in PORT_NAMES:
            command += [f"-{name.replace('_', '-')}-port", str(self.ports[name])]
        command += ["-dns-port", "-1", "-log-level", "warn"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=new_session
            )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"consul exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if self.get("/v1/status/leader"):
                    self.get("/v1/catalog/services")
                    return
                last = "no leader yet"
            except (OSError, urllib.error.URLError) as error:
                last = repr(error)
            time.sleep(0.05)  # poll interval
        self.stop()
        raise RuntimeError(f"consul not ready after {START_TIMEOUT_SECONDS}s ({last}):\n{self.logs()}")

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.http_addr + path, timeout=2) as response:
            return json.loads(response.read() or b"null")

    def put(self, path: str) -> None:
        request = urllib.request.Request(self.http_addr + path, method="PUT", data=b"")
        with urllib.request.urlopen(request, timeout=2):
            pass

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
