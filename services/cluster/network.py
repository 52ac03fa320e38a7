"""Hosts as Linux network namespaces on one machine, wired to one bridge in a private subnet.

Each host of a topology (services/topology.py) becomes a namespace with its own loopback and
one interface, ``eth0``, holding the host's address. The bridge that joins them lives in a
namespace of its own (the *switch*), and every veth pair is created directly between the
switch and a host: nothing is added to the machine's own namespace, so the private subnet
exists only inside namespaces this module made. Cutting a host off is taking its switch-side
link down (a partition, seen by every other host at once); healing is setting it up again.

Every name carries the owner's PID (``tsu-<pid>-<host>``, links ``tsu<pid>…``): a run that
crashed leaves namespaces whose owner is gone, and :func:`sweep` removes exactly those, with
the processes still inside them (ours: nothing else ever runs in a namespace we created).
Interface names stay within Linux's 15 characters.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "tsu"
NAMESPACE = re.compile(rf"^{PREFIX}-(\d+)-([a-z0-9-]+)$")
IFNAME_LIMIT = 15
RESERVED_PORTS = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")


class NetworkError(RuntimeError):
    """An ``ip`` command failed; the message has the command and what it printed."""


def ip(*args: str, namespace: str = "") -> str:
    """Run ``ip [-n namespace] args``; its output, or NetworkError naming the command."""
    command = ["ip", *(["-n", namespace] if namespace else []), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NetworkError(f"{' '.join(command)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


@dataclass(frozen=True)
class HostLink:
    """One host's namespace and the veth pair that wires it to the switch."""

    name: str
    namespace: str
    address: str
    switch_side: str  # the veth end on the bridge, in the switch namespace

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` to run inside this host (``ip netns exec``)."""
        return ["ip", "netns", "exec", self.namespace, *argv]


@dataclass
class Network:
    """The switch and the hosts of one run; :meth:`close` removes all of it."""

    subnet: ipaddress.IPv4Network
    socket_dir: Path
    """Where the forwarders' Unix sockets live (a directory of the run's own)."""
    owner: int = field(default_factory=os.getpid)
    reserved_ports: str = ""
    """Ports kept out of every host's ephemeral range (``ip_local_reserved_ports``, as
    "50000-51999"): the ports its servers bind. Otherwise an outgoing connection's source
    port can be one of them, and the server started next fails to bind it."""
    hosts: dict[str, HostLink] = field(default_factory=dict)
    _forwarders: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Checked before any namespace exists; the value reaches a shell in each host.
        if self.reserved_ports and not RESERVED_PORTS.fullmatch(self.reserved_ports):
            raise NetworkError(f"reserved ports {self.reserved_ports!r} are not like 50000-51999,8080")

    @property
    def switch(self) -> str:
        return f"{PREFIX}-{self.owner}-switch"

    def _ifname(self, suffix: str) -> str:
        name = f"{PREFIX}{self.owner}{suffix}"
        if len(name) > IFNAME_LIMIT:
            raise NetworkError(f"interface name {name!r} is over {IFNAME_LIMIT} characters")
        return name

    def open(self, hosts: Sequence[tuple[str, str]]) -> Network:
        """Create the switch and one namespace per ``(name, address)``, all links up."""
        try:
            ip("netns", "add", self.switch)
            bridge = self._ifname("br")
            ip("link", "add", bridge, "type", "bridge", namespace=self.switch)
            ip("link", "set", bridge, "up", namespace=self.switch)
            for number, (name, address) in enumerate(hosts):
                if ipaddress.IPv4Address(address) not in self.subnet:
                    raise NetworkError(f"host {name}: {address} is not in {self.subnet}")
                namespace = f"{PREFIX}-{self.owner}-{name}"
                ip("netns", "add", namespace)
                outer, inner = self._ifname(f"s{number}"), self._ifname(f"h{number}")
                ip(
                    "link",
                    "add",
                    outer,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    inner,
                    "netns",
                    namespace,
                    namespace=self.switch,
                )
                ip("link", "set", outer, "master", bridge, "up", namespace=self.switch)
                ip("link", "set", inner, "name", "eth0", namespace=namespace)
                ip("addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0", namespace=namespace)
                ip("link", "set", "eth0", "up", namespace=namespace)
                ip("link", "set", "lo", "up", namespace=namespace)
                self.hosts[name] = HostLink(name, namespace, address, outer)
                if self.reserved_ports:
                    self._reserve_ports(self.hosts[name])
        except BaseException:
            self.close()
            raise
        return self

    def _reserve_ports(self, host: HostLink) -> None:
        setting = "/proc/sys/net/ipv4/ip_local_reserved_ports"  # per namespace: written from inside
        command = host.command(["sh", "-c", f"echo {self.reserved_ports} > {setting}"])
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise NetworkError(f"{' '.join(command)}: {done.stderr.strip()}")

    def partition(self, host: str) -> None:
        """Cut ``host`` off from every other host (its switch-side link down)."""
        ip("link", "set", self.hosts[host].switch_side, "down", namespace=self.switch)

    def heal(self, host: str) -> None:
        ip("link", "set", self.hosts[host].switch_side, "up", namespace=self.switch)

    def expose(self, host: str, port: int, root_port: int) -> None:
        """Make ``host``'s loopback ``port`` answer on this machine's 127.0.0.1:``root_port``.

        Two socat processes and a Unix socket between them (a file, which both namespaces
        see): no route into the private subnet from the machine, and nothing but loopback
        on the machine's side.
        """
        socket = self.socket_dir / f"{host}-{port}.sock"
        self._spawn(
            self.hosts[host].command(["socat", f"UNIX-LISTEN:{socket},fork", f"TCP:127.0.0.1:{port}"])
        )
        self._spawn(
            ["socat", f"TCP-LISTEN:{root_port},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{socket}"]
        )

    def reach(self, host: str, root_port: int, port: int) -> None:
        """Make this machine's 127.0.0.1:``root_port`` answer on ``host``'s loopback ``port``.

        How a host reaches the machine's own PostgreSQL and RabbitMQ, again over a Unix socket.
        """
        socket = self.socket_dir / f"root-{root_port}-for-{host}.sock"
        self._spawn(["socat", f"UNIX-LISTEN:{socket},fork", f"TCP:127.0.0.1:{root_port}"])
        self._spawn(
            self.hosts[host].command(
                ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{socket}"]
            )
        )

    def _spawn(self, argv: list[str]) -> None:
        self._forwarders.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def close(self) -> None:
        """Stop the forwarders (by PID) and what runs inside our namespaces, then delete them."""
        for process in self._forwarders:
            if process.poll() is None:
                process.terminate()
        for process in self._forwarders:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._forwarders.clear()
        remove_namespaces(self.owner)


def namespaces() -> list[str]:
    """Every network namespace on the machine (``ip netns list`` names)."""
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def remove_namespaces(owner: int) -> list[str]:
    """Delete the namespaces ``owner`` made, killing the processes inside them first."""
    removed = []
    for namespace in namespaces():
        match = NAMESPACE.match(namespace)
        if match is None or int(match[1]) != owner:
            continue
        _kill_inside(namespace)
        with contextlib.suppress(NetworkError):
            ip("netns", "delete", namespace)
            removed.append(namespace)
    return removed


def sweep() -> list[str]:
    """Remove the namespaces of runs whose owner process is gone (a crash); their names."""
    owners = {int(m[1]) for m in map(NAMESPACE.match, namespaces()) if m is not None}
    removed: list[str] = []
    for owner in sorted(owners):
        if not _alive(owner):
            removed += remove_namespaces(owner)
    return removed


def _kill_inside(namespace: str, grace: float = 5.0) -> None:
    pids = [int(p) for p in ip("netns", "pids", namespace).split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(0.05)  # polling their exit
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@contextlib.contextmanager
def network(
    subnet: str, hosts: Sequence[tuple[str, str]], socket_dir: Path, reserved_ports: str = ""
) -> Iterator[Network]:
    """A :class:`Network` for the ``with`` block; nothing of it is left afterwards."""
    made = Network(ipaddress.IPv4Network(subnet), socket_dir, reserved_ports=reserved_ports).open(hosts)
    try:
        yield made
    finally:
        made.close()
