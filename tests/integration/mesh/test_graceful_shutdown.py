"""SIGTERM drains in-flight calls; a second signal exits at once (real processes)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.health import wait_serving
from tests.support.processes import ROOT, free_port, service_env
from tests.support.slow_server import METHOD


@pytest.fixture
def slow_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = service_env({"MESH_PORT": str(port), "MESH_GRACE_SECONDS": "10"})
    log = open(tmp_path / "slow.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.slow_server"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    address = f"127.0.0.1:{port}"
    wait_serving(address, process=process)
    yield process, address
    if process.poll() is None:
        process.kill()
    process.wait()
    log.close()


async def test_sigterm_lets_in_flight_calls_finish(slow_server: tuple[subprocess.Popen[bytes], str]) -> None:
    process, address = slow_server
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(METHOD)
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        in_flight = [asyncio.ensure_future(call(b"1500", timeout=20)) for _ in range(10)]
        # Every call has reached the server once the server has answered a later call.
        assert await call(b"0", timeout=5) == b"done"
        process.send_signal(signal.SIGTERM)
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        results = await asyncio.gather(*in_flight, return_exceptions=True)
    assert results == [b"done"] * 10
    assert await asyncio.to_thread(process.wait, 15) == 0


async def test_new_calls_are_refused_while_draining(slow_server: tuple[subprocess.Popen[bytes], str]) -> None:
    process, address = slow_server
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(METHOD)
        held = asyncio.ensure_future(call(b"1500", timeout=20))
        assert await call(b"0", timeout=5) == b"done"
        process.send_signal(signal.SIGTERM)
        async with grpc.aio.insecure_channel(address) as fresh:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                give_up = time.monotonic() + 15  # bounded: the signal is handled within moments
                while time.monotonic() < give_up:
                    await fresh.unary_unary(METHOD)(b"0", timeout=1)
        # grpc core cancels calls that arrive after shutdown began, refuses the connection, or
        # (on a loaded machine) leaves the call unanswered until its deadline: never serves it.
        assert refused.value.code() in (
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.CANCELLED,
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
        assert await held == b"done"


def test_second_signal_exits_at_once(slow_server: tuple[subprocess.Popen[bytes], str]) -> None:
    process, address = slow_server
    with grpc.insecure_channel(address) as channel:
        future = channel.unary_unary(METHOD).future(b"30000", timeout=60)
        assert channel.unary_unary(METHOD)(b"0", timeout=5) == b"done"
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        wait_serving_stopped(address)
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 130
        assert time.monotonic() - started < 10  # well inside the 10 s grace: it did not drain
        future.cancel()


def wait_serving_stopped(address: str) -> None:
    """Poll health until the server stops reporting SERVING (the first signal was handled)."""
    with pytest.raises(TimeoutError):
        wait_serving(address, timeout=0.2)
