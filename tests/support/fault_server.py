"""A stand-in for any shop service that misbehaves on demand, for resilience tests.

Run as ``python -m tests.support.fault_server`` with MESH_PORT, FAULT_SERVICE (the full
proto service name it answers for, every method of it) and FAULT_DIR. Every call is
counted in ``FAULT_DIR/count`` (so a test counts attempts at the server, across restarts of
nothing); while ``FAULT_DIR/down`` exists every call is answered UNAVAILABLE (an
application answer, not a refused connection); FAULT_SLEEP_MS makes each call wait first,
and a call cancelled while waiting appends the wall-clock time to ``FAULT_DIR/cancelled``.
Each call's ``context.time_remaining()`` on arrival is appended to ``FAULT_DIR/deadlines``
(``None`` without a deadline). With FAULT_RELAY_TO=host:port the server instead forwards
each call, with no timeout of its own, through a mesh channel: a middle hop whose only
deadline is the one it inherits. Answers are empty messages, which every response type accepts.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import grpc

from mesh.channel import MeshChannel, mesh_channel
from mesh.config import server_settings_from_env
from mesh.logs.setup import configure_logging
from mesh.registry import StaticDiscovery
from mesh.server import HostedService, serve


class FaultHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    """Answers every method of one service according to the files in ``directory``."""

    def __init__(self, service: str, directory: Path, sleep_ms: int, relay: MeshChannel | None) -> None:
        self.prefix = f"/{service}/"
        self.directory = directory
        self.sleep = sleep_ms / 1000
        self.relay = relay
        self.count = 0

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if not details.method.startswith(self.prefix):
            return None
        if self.relay is not None:
            forward = self.relay.unary_unary(details.method)

            async def relay(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
                reply: bytes = await forward(request)  # no timeout: only the inherited deadline applies
                return reply

            return grpc.unary_unary_rpc_method_handler(relay)
        return grpc.unary_unary_rpc_method_handler(self.answer)

    def record(self, name: str, value: object) -> None:
        with open(self.directory / name, "a") as log:
            log.write(f"{value!r}\n")

    async def answer(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.count += 1
        partial = self.directory / "count.tmp"
        partial.write_text(str(self.count))
        partial.replace(self.directory / "count")
        self.record("deadlines", context.time_remaining())
        if self.sleep:
            try:
                await asyncio.sleep(self.sleep)
            except asyncio.CancelledError:
                self.record("cancelled", time.time())
                raise
        if (self.directory / "down").exists():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "injected fault")
        return b""


def main() -> None:
    service = os.environ["FAULT_SERVICE"]
    upstream = os.environ.get("FAULT_RELAY_TO", "")
    relay = mesh_channel("upstream", StaticDiscovery({"upstream": [upstream]})) if upstream else None
    directory = Path(os.environ["FAULT_DIR"])
    handler = FaultHandler(service, directory, int(os.environ.get("FAULT_SLEEP_MS", "0")), relay)
    settings = server_settings_from_env(os.environ, "fault", 0)
    configure_logging("fault")

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((handler,))

    asyncio.run(serve(settings, [HostedService(service, register)]))


if __name__ == "__main__":
    main()
