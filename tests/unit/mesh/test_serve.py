"""``mesh.server.serve``: start, publish through the hooks, install the signals, run until stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import mesh.server
from mesh.config import ServerSettings
from mesh.server import BoundServer, serve


class RecordingHook:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.bound: BoundServer | None = None

    async def on_started(self, server: BoundServer) -> None:
        self.events.append("started")
        self.bound = server

    async def on_stopping(self) -> None:
        self.events.append("stopping")


async def test_serve_runs_until_the_installed_stop_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    installed: asyncio.Future[Callable[[], Awaitable[None]]] = asyncio.get_running_loop().create_future()
    hook = RecordingHook()

    def install(loop: asyncio.AbstractEventLoop, stop: Callable[[], Awaitable[None]]) -> None:
        assert loop is asyncio.get_running_loop()
        hook.events.append("signals")
        installed.set_result(stop)

    monkeypatch.setattr(mesh.server, "install_stop_signals", install)
    settings = ServerSettings("probe", 0, grace_seconds=0.5, tags=("t",))
    task = asyncio.create_task(serve(settings, [], hooks=[hook], meta={"zone": "a"}))
    stop = await asyncio.wait_for(installed, 10)
    assert hook.events == ["started", "signals"]  # published before signals can stop it
    bound = hook.bound
    assert bound is not None and bound.port > 0
    assert (bound.service_name, bound.host, bound.tags, bound.meta) == (
        "probe",
        "127.0.0.1",
        ("t",),
        {"zone": "a", "mtls": "off"},  # plaintext, said in the meta
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{bound.port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert not task.done()
    await stop()
    await asyncio.wait_for(task, 10)
    assert hook.events == ["started", "signals", "stopping"]
