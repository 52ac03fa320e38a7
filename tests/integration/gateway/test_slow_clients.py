"""A real gateway process against slow and piled-up clients: its file descriptors stay bounded.

The header-read timeout and the connection cap are set small through the gateway's settings
(environment); every connection is to 127.0.0.1 and every loop is bounded. No shop is needed:
what is measured happens before any route is matched, and the "normal request" that must still
be served is one the gateway answers itself.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.gateway.conftest import GatewayProcess, start_gateway
from tests.support.tokens import KeyPair

CAP = 16


@pytest.fixture
def strict_gateway(jwt_keys: KeyPair, tmp_path: Path) -> Iterator[GatewayProcess]:
    env = dict(
        MESH_JWT_PUBLIC_KEY_FILE=str(jwt_keys.public),
        MESH_JWT_KID="user-1",
        GATEWAY_RATE_LIMIT_PER_SECOND="0",
        GATEWAY_HEADER_TIMEOUT_SECONDS="0.5",
        GATEWAY_MAX_CONNECTIONS=str(CAP),
    )
    gateway = start_gateway(tmp_path, env)
    assert gateway.request("GET", "/openapi.json")[0] == 200
    yield gateway
    gateway.stop()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settle(predicate: object, within: float = 5.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)  # poll interval
    return bool(predicate())


def test_a_client_sending_a_header_line_every_few_hundred_ms_is_cut_off(
    strict_gateway: GatewayProcess,
) -> None:
    pid = strict_gateway.process.pid
    baseline = open_fds(pid)
    slow = socket.create_connection(("127.0.0.1", strict_gateway.port), timeout=5)
    try:
        slow.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        received = b""
        for line in range(20):  # one header line every 200 ms: at most 4 s, 8x the timeout
            time.sleep(0.2)
            try:
                slow.sendall(b"X-Slow-%d: y\r\n" % line)
            except OSError:  # the gateway has closed the connection
                break
        slow.settimeout(5)
        try:
            while chunk := slow.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
        assert received.startswith(b"HTTP/1.1 408"), received[:200]
        assert time.monotonic() - started < 4.0
    finally:
        slow.close()
    assert settle(lambda: open_fds(pid) <= baseline), "the slow client's descriptor stayed open"
    assert strict_gateway.request("GET", "/openapi.json")[0] == 200


def test_idle_connections_past_the_cap_are_closed_and_requests_are_still_served(
    strict_gateway: GatewayProcess,
) -> None:
    pid = strict_gateway.process.pid
    baseline = open_fds(pid)
    idle = []
    try:
        for _ in range(4 * CAP):  # connections that never send a byte
            idle.append(socket.create_connection(("127.0.0.1", strict_gateway.port), timeout=5))
        time.sleep(0.3)  # let the gateway accept them all
        assert open_fds(pid) <= baseline + CAP
        status, _, _ = strict_gateway.request("GET", "/openapi.json")
        assert status == 200
        assert open_fds(pid) <= baseline + CAP
    finally:
        for connection in idle:
            connection.close()
    # and past the header timeout, none of them is left
    assert settle(lambda: open_fds(pid) <= baseline)
