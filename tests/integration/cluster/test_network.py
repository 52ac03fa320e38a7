"""Hosts as namespaces: they reach each other, a partition cuts one off, nothing is left behind."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.cluster.network import NAMESPACE, Network, NetworkError, namespaces, network, sweep
from tests.integration.cluster.conftest import HOSTS, SUBNET
from tests.support.processes import free_port
from tests.support.waiting import wait_until_blocking

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]

POLL = 0.1  # seconds between probes: each one starts socat


def connects(network_: Network, source: str, address: str, port: int) -> bool:
    probe = subprocess.run(
        network_.hosts[source].command(["socat", "-T2", "-", f"TCP:{address}:{port},connect-timeout=1"]),
        input="",
        capture_output=True,
        text=True,
        timeout=10,
    )
    return probe.returncode == 0 and probe.stdout.strip() == "hi"


def test_hosts_reach_each_other_until_partitioned_and_again_after_healing(hosts: Network) -> None:
    app2 = hosts.hosts["app2"]
    server = subprocess.Popen(
        app2.command(["socat", f"TCP-LISTEN:7000,bind={app2.address},fork,reuseaddr", "SYSTEM:echo hi"])
    )
    try:
        wait_until_blocking(
            lambda: connects(hosts, "app1", app2.address, 7000), 5, "app1 reaching app2", step=POLL
        )
        hosts.partition("app2")
        assert not connects(hosts, "app1", app2.address, 7000)
        assert not connects(hosts, "consul1", app2.address, 7000)
        hosts.heal("app2")
        wait_until_blocking(
            lambda: connects(hosts, "app1", app2.address, 7000), 5, "app1 reaching app2 healed", step=POLL
        )
    finally:
        server.terminate()
        server.wait(5)


def test_the_subnet_exists_only_inside_the_namespaces(hosts: Network) -> None:
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    addresses = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    assert "10.213.37." not in routes + addresses  # the machine's own namespace knows nothing of it
    inside = subprocess.run(
        hosts.hosts["app1"].command(["ip", "-4", "addr", "show", "eth0"]),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "10.213.37.21/24" in inside.stdout


def test_a_hosts_loopback_port_is_exposed_on_the_machines_loopback(hosts: Network) -> None:
    app1 = hosts.hosts["app1"]
    server = subprocess.Popen(
        app1.command(["socat", "TCP-LISTEN:7001,bind=127.0.0.1,fork,reuseaddr", "SYSTEM:echo hi"])
    )
    port = free_port()
    hosts.expose("app1", 7001, port)
    try:
        wait_until_blocking(lambda: _root_reads(port) == "hi", 5, "app1:7001 read on the loopback", step=POLL)
    finally:
        server.terminate()
        server.wait(5)


def test_a_machine_port_is_reachable_from_a_hosts_loopback(hosts: Network) -> None:
    port = free_port()
    server = subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr", "SYSTEM:echo hi"])
    hosts.reach("app2", port, 7002)
    try:
        wait_until_blocking(
            lambda: connects(hosts, "app2", "127.0.0.1", 7002), 5, "app2 reaching the machine", step=POLL
        )
    finally:
        server.terminate()
        server.wait(5)


def test_closing_removes_every_namespace_and_the_processes_inside(tmp_path: Path) -> None:
    with network(SUBNET, HOSTS[:2], tmp_path) as made:
        sleeper = subprocess.Popen(
            made.hosts["consul1"].command([sys.executable, "-c", "import time; time.sleep(60)"])
        )
        mine = [n for n in namespaces() if n.startswith(f"tsu-{made.owner}-")]
        assert sorted(mine) == sorted([made.switch, *(h.namespace for h in made.hosts.values())])
    assert sleeper.wait(10) is not None
    assert [n for n in namespaces() if n.startswith(f"tsu-{made.owner}-")] == []


SOURCE_PORTS = """
import socket
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(8)
ports = [listener.getsockname()[1]]
clients = [socket.create_connection(listener.getsockname()) for _ in range(5)]
print(" ".join(str(p) for p in ports + [c.getsockname()[1] for c in clients]))
"""


def test_a_hosts_reserved_ports_are_never_the_source_port_of_a_connection(tmp_path: Path) -> None:
    # All but 60990-60999 of the ephemeral range (32768-60999) reserved: every port the kernel
    # picks inside the host, for a bind to 0 or a connection's source, has to be one of those.
    with network(SUBNET, HOSTS[:1], tmp_path, reserved_ports="32768-60989") as made:
        host = made.hosts["consul1"]
        probe = subprocess.run(
            host.command([sys.executable, "-c", SOURCE_PORTS]), capture_output=True, text=True, timeout=30
        )
        assert probe.returncode == 0, probe.stderr
        picked = [int(port) for port in probe.stdout.split()]
        assert len(picked) == 6 and all(60990 <= port <= 60999 for port in picked), picked


def test_reserved_ports_that_are_not_a_port_list_are_refused_before_any_namespace(tmp_path: Path) -> None:
    def ours() -> set[str]:  # only this process's: another run on the machine may open or close its own
        return {n for n in namespaces() if (m := NAMESPACE.match(n)) is not None and int(m[1]) == os.getpid()}

    before = ours()
    with pytest.raises(NetworkError, match="are not like"):
        Network(ipaddress.IPv4Network(SUBNET), tmp_path, reserved_ports="50000; touch /tmp/x")
    assert ours() == before


def test_the_sweep_removes_what_a_dead_run_left_and_nothing_of_a_live_one(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    crashed = Network(ipaddress.IPv4Network(SUBNET), tmp_path, owner=gone.pid)
    crashed.open(HOSTS[:1])  # as if run by a process that then died without cleaning up
    with network(SUBNET, HOSTS[:1], tmp_path / "live") as live:
        removed = sweep()
        assert sorted(removed) == sorted([crashed.switch, crashed.hosts["consul1"].namespace])
        assert live.switch in namespaces()
    owners = [int(m[1]) for m in map(NAMESPACE.match, namespaces()) if m is not None]
    assert gone.pid not in owners


def _root_reads(port: int) -> str:
    probe = subprocess.run(
        ["socat", "-T2", "-", f"TCP:127.0.0.1:{port},connect-timeout=1"],
        input="",
        capture_output=True,
        text=True,
        timeout=10,
    )
    return probe.stdout.strip()
