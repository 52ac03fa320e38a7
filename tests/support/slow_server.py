"""A server built with mesh.server.serve whose one method waits before answering.

Run as ``python -m tests.support.slow_server`` with MESH_PORT set. ``test.Slow/Wait`` takes
the milliseconds to wait as its ASCII request body, so a test can hold calls in flight while
it signals the process.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import grpc

from mesh.config import server_settings_from_env
from mesh.logs.setup import configure_logging
from mesh.server import HostedService, serve

SERVICE = "test.Slow"
METHOD = f"/{SERVICE}/Wait"


async def wait(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    await asyncio.sleep(int(request.decode()) / 1000)
    return b"done"


def register(server: grpc.aio.Server) -> None:
    handler = grpc.unary_unary_rpc_method_handler(wait)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Wait": handler}),))


def main() -> None:
    settings = server_settings_from_env(os.environ, "slow", 0)
    configure_logging("slow")
    asyncio.run(serve(settings, [HostedService(SERVICE, register)]))


if __name__ == "__main__":
    main()
