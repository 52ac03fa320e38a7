"""A private RabbitMQ node for chaos tests: started, SIGKILLed and restarted by PID.

The machine's broker (127.0.0.1:5672) is shared by every engineer and test on this machine,
so a test that wants to kill a broker gets its own node: a unique Erlang node name, free AMQP
and distribution ports (never 25672, the machine node's), and its own mnesia and log
directories in a data dir the ``rabbitmq`` user owns (the node refuses to start otherwise).

Why not the Debian wrapper ``/usr/sbin/rabbitmq-server``: as root it runs ``su rabbitmq -c``,
and su puts the command in a new session, so the beam.smp would escape the process group we
created and survive our kill. Instead the node's own start script runs as the ``rabbitmq``
user through ``setpriv`` (which only switches ids and execs) in a new session we lead; its
beam.smp stays in our process group. It is started with ``posix_spawn``, never ``fork``: a
test restarts the node from a thread while grpc is busy in the event loop, and a forked child
of a process in that state can crash before its exec (grpc's fork handlers; seen as SIGSEGV). A kill sends SIGKILL to that group and, by PID, to every descendant found
under our child (erl_child_setup and inet_gethost take their own sessions), then polls until
they are all gone. A restart reuses the node name and the mnesia dir, so durable queues and
persistent messages survive it, as they would on a real broker's crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika

from tests.support.processes import free_port

NODE_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
SETPRIV = "/usr/bin/setpriv"
MACHINE_DIST_PORT = 25672
BROKER_USER = "rabbitmq"


def _children_of() -> dict[int, list[int]]:
    """Every live process's children, from /proc (a snapshot)."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    """The PIDs below ``pid`` (children, grandchildren, ...), at this moment."""
    tree, found, todo = _children_of(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting for its reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def amqp_answers(url: str, wait: float = 2.0) -> bool:
    """Whether a full AMQP connection (handshake, open) succeeds, not merely the TCP port."""
    host, port = url.rsplit("@", 1)[1].rstrip("/").split(":")
    try:  # the TCP probe first: it keeps aio-pika from logging every refused attempt
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), wait)
        writer.close()
    except (OSError, TimeoutError):
        return False
    try:
        connection = await aio_pika.connect(url, timeout=wait)
    except Exception:  # any failure means "not ready yet"; the caller polls
        return False
    await connection.close()
    return True


def stable_port(*taken: int) -> int:
    """A free port *below* the ephemeral range, so it stays ours while the node is down.

    While the node is dead its clients keep reconnecting to its port; a port in the ephemeral
    range can then be taken by one of those very connections (a TCP self-connect when the
    client's source port equals it) or by any outgoing connection on the machine, and the
    restarted node would fail to bind. :func:`free_port` hands out ports below the range, each
    worker from its own slice in turn, so no other test is given this one meanwhile.
    """
    for _ in range(200):
        port = free_port()
        if port not in taken and port not in (5672, MACHINE_DIST_PORT):
            return port
    raise RuntimeError("no free port below the ephemeral range")


class Spawned:
    """A child started with ``posix_spawn``: the few Popen methods the node needs, by PID."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"process {self.pid} still running after {timeout} s")
            time.sleep(0.02)  # poll interval: waitpid without a timeout would block the caller
        assert self.returncode is not None
        return self.returncode


@dataclass
class RabbitNode:
    """One private broker node; :meth:`close` kills it and removes its directory."""

    root: Path
    name: str = field(default_factory=lambda: f"chaos-{uuid.uuid4().hex[:10]}@localhost")
    port: int = 0
    dist_port: int = 0
    process: Spawned | None = None
    pids: list[int] = field(default_factory=list)

    @classmethod
    def create(cls, parent: Path | None = None) -> RabbitNode:
        """A node with a fresh data dir (owned by the broker user) and free ports; not started.

        ``parent`` must be traversable by the broker user (pytest's tmp dirs are 0700 root):
        the default, the system temp dir, is.
        """
        root = Path(tempfile.mkdtemp(prefix="rabbit-node-", dir=parent))
        broker = pwd.getpwnam(BROKER_USER)
        os.chown(root, broker.pw_uid, broker.pw_gid)
        port = stable_port()
        dist_port = stable_port(port)
        return cls(root, port=port, dist_port=dist_port)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def log_path(self) -> Path:
        return self.root / "node.out"

    def _env(self) -> dict[str, str]:
        broker = pwd.getpwnam(BROKER_USER)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=broker.pw_dir,  # the broker user's Erlang cookie lives there
            USER=BROKER_USER,
            LOGNAME=BROKER_USER,
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.root / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.root / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.root / "plugins"),
            RABBITMQ_CONFIG_FILE=str(self.root / "none"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.root / "none-advanced.config"),
            ERL_CRASH_DUMP=str(self.root / "erl_crash.dump"),
        )
        return env

    def start(self, timeout: float = 60.0) -> RabbitNode:
        """Start (or restart: same name, same mnesia) and wait until AMQP connections succeed."""
        assert self.process is None or self.process.poll() is not None, "node already running"
        command = [
            SETPRIV,
            f"--reuid={BROKER_USER}",
            f"--regid={BROKER_USER}",
            "--clear-groups",
            str(NODE_SCRIPT),
        ]
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            pid = os.posix_spawn(
                command[0],
                command,
                self._env(),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log, 1),
                    (os.POSIX_SPAWN_DUP2, log, 2),
                ],
                setsid=True,
            )
        finally:
            os.close(log)
        self.process = Spawned(pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            self.pids = descendants(self.process.pid)
            if asyncio.run(amqp_answers(self.url)):
                self.pids = descendants(self.process.pid)
                return self
            time.sleep(0.2)  # poll interval between connection attempts
        code = self.process.poll()
        self.kill()
        raise RuntimeError(
            f"rabbit node {self.name} did not become ready on port {self.port} "
            f"(exit code {code}):\n{self.diagnostics()}"
        )

    def diagnostics(self, size: int = 3000) -> str:
        """The tails of the node's stdout and of its own log files (for a failing test's message)."""
        parts = [f"--- {self.log_path.name} ---\n{self.log_path.read_text(errors='replace')[-size:]}"]
        for path in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-size:]}")
        return "\n".join(parts)

    def kill(self, timeout: float = 20.0) -> None:
        """SIGKILL the node's process group and every descendant, and wait until all are gone."""
        if self.process is None:
            return
        victims = {self.process.pid, *self.pids, *descendants(self.process.pid)}
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)  # our child leads its own group
        for pid in victims - {self.process.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout)
        deadline = time.monotonic() + timeout
        while any(alive(pid) for pid in victims):
            if time.monotonic() > deadline:
                raise RuntimeError(f"broker processes survived SIGKILL: {[p for p in victims if alive(p)]}")
            time.sleep(0.05)  # poll interval: the kernel reaps asynchronously
        self.pids = []

    def restart(self, timeout: float = 60.0) -> RabbitNode:
        self.kill()
        return self.start(timeout)

    def close(self) -> None:
        """Kill the node and remove its data dir."""
        try:
            self.kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
