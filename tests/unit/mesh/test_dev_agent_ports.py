"""A dev agent's ports are distinct: the same port for serf LAN and WAN stops the agent."""

from __future__ import annotations

import socket

import pytest

from mesh.registry import dev_agent
from mesh.registry.dev_agent import CHOSEN_PORTS, PORT_NAMES, ConsulDevAgent, PortAllocator, free_ports


def test_free_ports_are_distinct_and_free_for_udp() -> None:
    ports = free_ports(64)
    assert len(set(ports)) == 64
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", port))


def test_agent_ports_stay_distinct_when_the_kernel_repeats_a_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    """Probing one port at a time can get the same ephemeral port back (seen in CI)."""
    handed_out = iter([40001, 40001, 40002, 40003, 40004, 40005, 40006, 40007])
    real_socket = socket.socket

    class RepeatingSocket(real_socket):
        def bind(self, address: object) -> None:
            host, port = address  # type: ignore[misc]
            if port == 0 and self.type == socket.SOCK_STREAM:
                port = next(handed_out)
            try:
                super().bind((host, port))
            except OSError:
                super().bind((host, 0))  # the canned port is busy here: any will do

    monkeypatch.setattr(dev_agent.socket, "socket", RepeatingSocket)
    agent = ConsulDevAgent(binary="consul", log_path=tmp_path)  # type: ignore[arg-type]
    ports = agent.assign_ports()
    assert sorted(ports) == sorted(PORT_NAMES)
    assert len(set(ports.values())) == len(PORT_NAMES)


def test_ports_already_set_are_kept_and_never_handed_out_again(tmp_path: object) -> None:
    agent = ConsulDevAgent(binary="consul", log_path=tmp_path, ports={"http": 8500})  # type: ignore[arg-type]
    ports = agent.assign_ports()
    assert ports["http"] == 8500
    assert len(set(ports.values())) == len(PORT_NAMES)


def test_a_port_allocator_never_hands_out_a_port_twice() -> None:
    """Each probe is released at once, so free_port alone may repeat a port whose process has
    not bound it yet (a launcher's instance once failed so); the allocator remembers."""
    allocator = PortAllocator()
    ports = [allocator.take() for _ in range(400)]  # ~29 repeats expected from free_port alone
    assert len(set(ports)) == len(ports)
    assert all(CHOSEN_PORTS[0] <= port < CHOSEN_PORTS[1] for port in ports)


def test_free_ports_pass_over_the_ports_excluded() -> None:
    allowed = range(CHOSEN_PORTS[1] - 400, CHOSEN_PORTS[1])  # 1 in 7 of the range
    excluded = set(range(CHOSEN_PORTS[0], allowed.start))
    assert set(free_ports(4, exclude=excluded)) <= set(allowed)
