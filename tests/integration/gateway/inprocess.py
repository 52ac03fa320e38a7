"""A gateway served inside the test's event loop, with an upstream seam the test controls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

from gateway.app import Gateway
from gateway.server import HttpServer, ServerLimits
from gateway.settings import GatewaySettings, settings_from_env
from gateway.upstream import Channel, ChannelFactory
from mesh.metrics.endpoint import MetricsEndpoint
from tests.integration.gateway.conftest import http_request


class CountingFactory:
    """Wraps a ChannelFactory and counts every upstream call made through it."""

    def __init__(self, inner: ChannelFactory) -> None:
        self.inner = inner
        self.calls = 0

    def channel(self, service: str) -> Channel:
        return _CountingChannel(self, self.inner.channel(service))

    def endpoint_count(self, service: str) -> int:
        return self.inner.endpoint_count(service)

    async def close(self) -> None:
        await self.inner.close()


class _CountingChannel:
    def __init__(self, factory: CountingFactory, channel: Channel) -> None:
        self._factory = factory
        self._channel = channel

    def _wrap(self, inner: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self._factory.calls += 1
            return inner(*args, **kwargs)

        return call

    def unary_unary(self, method: str, **kwargs: Any) -> Any:
        return self._wrap(self._channel.unary_unary(method, **kwargs))

    def unary_stream(self, method: str, **kwargs: Any) -> Any:
        return self._wrap(self._channel.unary_stream(method, **kwargs))


class Served:
    def __init__(self, port: int, gateway: Gateway, metrics_port: int) -> None:
        self.port = port
        self.gateway = gateway
        self.metrics_port = metrics_port  # the gateway's /metrics listener, as __main__ runs one

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        return await asyncio.to_thread(http_request, self.port, method, path, **kwargs)


@asynccontextmanager
async def serve(settings: GatewaySettings, factory: ChannelFactory) -> AsyncIterator[Served]:
    gateway = Gateway(settings, factory)
    server = HttpServer(
        gateway.handle, ServerLimits(settings.limits.max_header_bytes, settings.limits.max_body_bytes)
    )
    port = await server.start("127.0.0.1", 0)
    metrics = MetricsEndpoint(gateway.metrics.registry, "127.0.0.1", 0)
    try:
        yield Served(port, gateway, metrics.port)
    finally:
        await server.close(2.0)
        await factory.close()
        metrics.close()


def settings_for(env: dict[str, str], **overrides: Any) -> GatewaySettings:
    return replace(settings_from_env(env), **overrides)
