"""A tiny service for discovery tests: every answer names the instance that gave it.

Run as ``python -m tests.integration.discovery.echo_server`` with ``MESH_PORT`` and
``CONSUL_HTTP_ADDR`` set; it serves through :class:`mesh.server.MeshServer` with a
:class:`mesh.registry.consul.ConsulRegistrar` hook, so start, registration and the shutdown
order (deregister -> NOT_SERVING -> drain -> stop) are the real ones. ``ECHO_DELAY_MS``
slows every call down, for balancer tests; ``ECHO_FAIL_CODE`` (a status code name) makes
every ``Echo`` answer that status while the health check stays passing: an instance that is
up to Consul and failing its callers, which only a client's own observations can eject.

Like a service, it runs under mTLS unless ``MESH_INSECURE=1``: it takes the certificate of
its ``ECHO_NAME`` from the agent at ``CONSUL_HTTP_ADDR``, requires client certificates and asks
intentions who may call. Consul's check (every ``MESH_CHECK_INTERVAL_SECONDS``, 1 s by
default, as a service's) and readiness dial its plaintext health-only listener on
``MESH_HEALTH_PORT``. The methods use raw bytes, no protos:

- ``Echo`` (unary-unary) answers ``<label>|<request>``;
- ``Count`` (unary-stream) answers ``int(request)`` messages ``<label>|<i>``;
- ``Join`` (stream-unary) answers ``<label>|`` + the requests joined by ``,``;
- ``Chat`` (stream-stream) answers each request as ``<label>|<request>``;
- ``Fail`` (unary-unary) aborts with the status code named in the request.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import grpc

SERVICE = "tsunagu.test.Echo"
ECHO = f"/{SERVICE}/Echo"
COUNT = f"/{SERVICE}/Count"
JOIN = f"/{SERVICE}/Join"
CHAT = f"/{SERVICE}/Chat"
FAIL = f"/{SERVICE}/Fail"


def handlers(label: str, delay: float = 0.0, fail_code: str = "") -> grpc.GenericRpcHandler:
    """The Echo service's handlers; every response starts with ``label``."""
    prefix = label.encode() + b"|"

    async def echo(request: bytes, context: Any) -> bytes:
        if delay:
            await asyncio.sleep(delay)
        if fail_code:
            await context.abort(getattr(grpc.StatusCode, fail_code), f"{label} fails every Echo")
        return prefix + request

    async def count(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for i in range(int(request or b"0")):
            yield prefix + str(i).encode()

    async def join(requests: AsyncIterator[bytes], context: Any) -> bytes:
        return prefix + b",".join([r async for r in requests])

    async def chat(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            yield prefix + request

    async def fail(request: bytes, context: Any) -> bytes:
        await context.abort(
            getattr(grpc.StatusCode, request.decode()), f"asked to fail with {request.decode()}"
        )
        raise AssertionError("abort returns only by raising")

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Join": grpc.stream_unary_rpc_method_handler(join),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
        },
    )


async def run() -> None:
    from mesh.config import env_float, server_settings_from_env
    from mesh.connect.settings import security_settings_from_env
    from mesh.connect.setup import connect_workload
    from mesh.logs.setup import configure_logging
    from mesh.registry.consul import ConsulRegistrar
    from mesh.server import HostedService, serve

    settings = server_settings_from_env(os.environ, os.environ.get("ECHO_NAME", "echo"), 0)
    security = security_settings_from_env(os.environ)
    delay = int(os.environ.get("ECHO_DELAY_MS", "0")) / 1000
    fail_code = os.environ.get("ECHO_FAIL_CODE", "")
    configure_logging(settings.service_name)
    consul_address = os.environ["CONSUL_HTTP_ADDR"]
    workload = await connect_workload(settings.service_name, consul_address, security)
    registrar = ConsulRegistrar(
        consul_address,
        check_interval=env_float(os.environ, "MESH_CHECK_INTERVAL_SECONDS", 1.0),
        token=security.consul_token,
    )

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((handlers(f"{settings.port}", delay, fail_code),))

    try:
        await serve(settings, [HostedService(SERVICE, register)], hooks=[registrar], security=workload)
    finally:
        if workload is not None:
            await workload.close()


def main() -> None:
    asyncio.run(run())


if __name__ == "__main__":
    main()
