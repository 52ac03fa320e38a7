"""MeshServer's life: SERVING per hosted service, hooks around it, and the stop order."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mesh.config import ServerSettings
from mesh.server.lifecycle import BoundServer
from mesh.server.runtime import HostedService, MeshServer

SERVING = health_pb2.HealthCheckResponse.SERVING


async def health(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)


class Hook:
    def __init__(self, server: list[MeshServer], fail: bool = False) -> None:
        self.server = server
        self.fail = fail
        self.bound: BoundServer | None = None
        self.health_when_stopping: int | None = None

    async def on_started(self, server: BoundServer) -> None:
        self.bound = server

    async def on_stopping(self) -> None:
        # Withdrawn first: still SERVING while the registry forgets this instance.
        self.health_when_stopping = await health(self.server[0].port)
        if self.fail:
            raise RuntimeError("registry gone")


async def test_start_serves_health_and_stop_withdraws_first() -> None:
    registered: list[grpc.aio.Server] = []
    holder: list[MeshServer] = []
    hooks = [Hook(holder), Hook(holder, fail=True)]
    server = MeshServer(
        ServerSettings("probe", 0, grace_seconds=0.2, version="9.9", advertise_host="probe.local"),
        [HostedService("test.v1.Probe", registered.append)],
        hooks=hooks,
        meta={"zone": "a"},
    )
    holder.append(server)
    port = await server.start()
    assert port == server.port > 0 and len(registered) == 1
    assert await health(port) == SERVING
    assert await health(port, "test.v1.Probe") == SERVING
    bound = hooks[0].bound
    assert bound == BoundServer(
        "probe", "probe.local", port, ("test.v1.Probe",), "9.9", (), {"zone": "a", "mtls": "off"}
    )
    await server.stop()  # a failing hook is logged, not allowed to stop the stop
    assert [h.health_when_stopping for h in hooks] == [SERVING, SERVING]
    await server.wait_for_termination()
    await server.stop()  # a second stop is a no-op
    try:
        await health(port)
    except grpc.aio.AioRpcError as error:
        assert error.code() is grpc.StatusCode.UNAVAILABLE
    else:
        raise AssertionError("the server still answers after stop")
