"""Real ``mesh xds`` processes and real xDS clients (plain grpcio and Node) for tests and benches.

:class:`ControlPlane` runs ``python -m mesh.xds`` against a test's Consul agent, writing the
bootstrap file its clients read and, under mTLS, the client identity's certificate files; it
is ready when its gRPC health says SERVING and the bootstrap exists (polled). :class:`XdsClient`
runs tests/support/xds_client.py or its Node twin, xds_client.js, as a process of its own
(``GRPC_XDS_BOOTSTRAP`` is read once per process) and reads back one record per call.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.health import wait_serving
from tests.support.processes import ROOT, free_port

NODE_MODULES = ROOT / ".tools" / "node_modules"
CLIENT_SCRIPTS = {
    "python": [sys.executable, str(ROOT / "tests" / "support" / "xds_client.py")],
    "node": ["node", str(ROOT / "tests" / "support" / "xds_client.js")],
}


@dataclass
class ControlPlane:
    """One ``mesh xds`` process; ``start`` it, ``stop`` or ``kill`` it, start it again on its port."""

    consul: str
    workdir: Path
    client_identity: str = ""
    policy_file: Path | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> Path:
        return self.workdir / "xds-bootstrap.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"xds-{self.port}.log"

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "mesh.xds", "--bootstrap-out", str(self.bootstrap)]
        if self.client_identity:
            args += ["--client-identity", self.client_identity, "--client-certs", str(self.workdir / "certs")]
        return args

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OTEL_", "CONSUL_"))}
        env.update(
            PYTHONPATH=str(ROOT),
            CONSUL_HTTP_ADDR=self.consul,
            MESH_XDS_PORT=str(self.port),
            MESH_XDS_ADMIN_PORT=str(self.admin_port),
            MESH_INSECURE="0" if self.client_identity else "1",
        )
        if self.policy_file is not None:
            env["MESH_POLICY_FILE"] = str(self.policy_file)
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> ControlPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.bootstrap.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=ROOT, env=self.environment(), stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_serving(f"127.0.0.1:{self.port}", timeout, self.process)
            deadline = time.monotonic() + timeout
            while not self.bootstrap.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no bootstrap file {self.bootstrap} after {timeout}s")
                time.sleep(0.05)  # poll interval
        except Exception as error:
            self.kill()
            raise RuntimeError(f"mesh xds did not start: {error}\n{self.logs()}") from error
        return self

    def admin(self, path: str) -> Any:
        """GET the admin endpoint's JSON at ``path``."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5) as reply:
            return json.loads(reply.read())

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass(frozen=True)
class Call:
    """One call a client made: when, and the instance's label or the status code."""

    start: float
    end: float
    label: str | None
    code: str | None
    details: str = ""

    @property
    def ok(self) -> bool:
        return self.label is not None


@dataclass
class XdsClient:
    """One client process (``language`` "python" or "node") calling ``target`` through xDS."""

    language: str
    target: str
    bootstrap: Path
    out: Path
    options: Sequence[str] = ()
    process: subprocess.Popen[str] | None = None

    def start(self) -> XdsClient:
        env = dict(os.environ, GRPC_XDS_BOOTSTRAP=str(self.bootstrap), NODE_PATH=str(NODE_MODULES))
        env.pop("PYTHONPATH", None)  # the client imports grpc only
        self.out.unlink(missing_ok=True)
        command = [*CLIENT_SCRIPTS[self.language], "--target", self.target, "--out", str(self.out)]
        self.process = subprocess.Popen(
            [*command, *self.options],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return self

    def wait(self, timeout: float = 120.0) -> str:
        """Wait for the client to finish; its output (the failed count, or why it crashed)."""
        assert self.process is not None
        try:
            output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            output, _ = self.process.communicate()
            raise AssertionError(f"{self.language} xds client ran past {timeout}s:\n{output}") from None
        assert self.process.returncode == 0, (
            f"{self.language} xds client exited {self.process.returncode}:\n{output}"
        )
        return output

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.communicate()

    def calls(self) -> list[Call]:
        """Every call recorded so far, in start order.

        The client may be writing a line while this reads: only newline-terminated lines
        are whole, so a trailing fragment waits for the next read.
        """
        if not self.out.exists():
            return []
        text = self.out.read_text()
        calls = []
        for line in text[: text.rfind("\n") + 1].splitlines():
            if line.strip():
                raw = json.loads(line)
                calls.append(
                    Call(raw["start"], raw["end"], raw.get("label"), raw.get("code"), raw.get("details", ""))
                )
        return sorted(calls, key=lambda c: c.start)


def labels(calls: Sequence[Call]) -> Counter[str]:
    """How many calls each instance answered."""
    return Counter(c.label for c in calls if c.label is not None)


def failures(calls: Sequence[Call]) -> list[Call]:
    return [c for c in calls if not c.ok]
