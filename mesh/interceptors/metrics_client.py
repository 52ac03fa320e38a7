"""Client RPC metrics (``grpc_client_*``), one interceptor class per call type.

For plain ``grpc.aio`` channels (opt-in). MeshChannels count their attempts without an
interceptor (:mod:`mesh.telemetry.client_metrics`, same families); do not use both on one
channel or each attempt counts twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from mesh.interceptors.client_status import StatusWatch
from mesh.interceptors.metrics_server import MethodCache
from mesh.interceptors.rpc import BIDI_STREAM, CLIENT_STREAM, SERVER_STREAM, UNARY, RpcCache
from mesh.telemetry.metrics import RpcFamilies


class _MetricsClient:
    __slots__ = ("_methods", "_rpcs", "_status")

    def __init__(self, families: RpcFamilies) -> None:
        self._methods = MethodCache(families)
        self._rpcs = RpcCache()
        self._status = StatusWatch()

    async def _unary_response(
        self, type_: str, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        metrics = self._methods.get(self._rpcs.get(details.method, type_))
        began = metrics.begin()
        code = grpc.StatusCode.UNKNOWN
        try:
            call = await continuation(details, request)
            code = await call.code()
        except BaseException:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            metrics.end(began, code)
        return call

    async def _streaming_response(
        self, type_: str, continuation: Callable[..., Awaitable[Any]], details: Any, request: Any
    ) -> Any:
        metrics = self._methods.get(self._rpcs.get(details.method, type_))
        began = metrics.begin()
        try:
            call = await continuation(details, request)
        except BaseException:
            metrics.end(began, grpc.StatusCode.CANCELLED)
            raise
        self._status.watch(call, lambda code: metrics.end(began, code))
        return call


class MetricsUnaryUnary(_MetricsClient, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]  # grpc is untyped (Any) for mypy
    """Counts and times unary-unary calls."""

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._unary_response(UNARY, continuation, client_call_details, request)


class MetricsStreamUnary(_MetricsClient, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]  # grpc is untyped (Any) for mypy
    """Counts and times client-streaming calls."""

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._unary_response(CLIENT_STREAM, continuation, client_call_details, request_iterator)


class MetricsUnaryStream(_MetricsClient, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[misc]  # grpc is untyped (Any) for mypy
    """Counts and times server-streaming calls (until the stream ends)."""

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await self._streaming_response(SERVER_STREAM, continuation, client_call_details, request)


class MetricsStreamStream(_MetricsClient, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]  # grpc is untyped (Any) for mypy
    """Counts and times bidirectional calls (until the stream ends)."""

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await self._streaming_response(
            BIDI_STREAM, continuation, client_call_details, request_iterator
        )


def metrics_client_interceptors(families: RpcFamilies) -> list[grpc.aio.ClientInterceptor]:
    """All four, sharing one set of ``grpc_client_*`` families."""
    return [
        MetricsUnaryUnary(families),
        MetricsStreamUnary(families),
        MetricsUnaryStream(families),
        MetricsStreamStream(families),
    ]
