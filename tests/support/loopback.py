"""Loopback grpc.aio backends that record what reached them, and MeshChannels to them.

Each backend is a real grpc.aio server on 127.0.0.1 that records every attempt it receives
(with its ``x-mesh-attempt``), so channel tests count what reached the network rather than
what the channel believes it sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from mesh.channel import MeshChannel, mesh_channel
from mesh.deadline import remaining
from mesh.registry import StaticDiscovery
from mesh.resilience import parse_policy
from mesh.server.deadline import DeadlineInterceptor
from shop.inventory.v1 import inventory_pb2 as inv

SERVICE = "shop.inventory.v1.InventoryService"
RESERVE = f"/{SERVICE}/ReserveStock"
GET = f"/{SERVICE}/GetProduct"
Behaviour = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]


async def ok(context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    return b""


async def unavailable(context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "injected")
    raise AssertionError("abort returns only by raising")


class Backend:
    """One loopback server; ``attempts`` lists the x-mesh-attempt of every call (1 if absent)."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.attempts: list[int] = []
        self.server = grpc.aio.server(interceptors=[DeadlineInterceptor()])
        self.deadlines: list[float | None] = []

        async def handle(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            sent = dict(context.invocation_metadata() or ()).get("x-mesh-attempt", "1")
            self.attempts.append(int(sent))
            self.deadlines.append(remaining())
            return await self.behaviour(context)

        handler = grpc.unary_unary_rpc_method_handler(handle)
        stream = grpc.unary_stream_rpc_method_handler(self._stream)
        self.server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE, {"ReserveStock": handler, "GetProduct": handler, "CommitStock": stream}
                ),
            )
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def _stream(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        self.attempts.append(int(dict(context.invocation_metadata() or ()).get("x-mesh-attempt", "1")))
        yield await self.behaviour(context)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Awaitable[list[Backend]]]]:
    started: list[Backend] = []

    async def start(*behaviours: Behaviour) -> list[Backend]:
        made = [Backend(b) for b in behaviours]
        for backend in made:
            await backend.server.start()
        started.extend(made)
        return made

    yield start
    for backend in started:
        await backend.server.stop(None)


def channel_to(backends: list[Backend], policy: dict[str, Any] | None = None) -> MeshChannel:
    discovery = StaticDiscovery({"inventory": [b.target for b in backends]})
    settings = parse_policy({"services": {"inventory": policy}} if policy else {})
    return mesh_channel("inventory", discovery, policy=settings, outlier=None)


def reserve(channel: MeshChannel) -> Callable[..., Any]:
    return channel.unary_unary(
        RESERVE, inv.ReserveStockRequest.SerializeToString, inv.ReserveStockResponse.FromString
    )
