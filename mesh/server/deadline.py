"""A server interceptor that keeps each call's deadline in :mod:`mesh.deadline`'s contextvar.

Why here and not in each servicer: propagation only works if *every* handler publishes its
deadline, so :class:`~mesh.server.runtime.MeshServer` installs this interceptor first on
every server. grpc.aio runs each call in its own task, so the value set while the handler
runs is that call's alone. One wrapper per handler type: a unary response is awaited, a
response stream is iterated, and mixing the two in one wrapper breaks one of them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from mesh.deadline import deadline_scope

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def _deadline_of(context: Any) -> float | None:
    left = context.time_remaining()
    return None if left is None else time.monotonic() + left


def _unary_response(behaviour: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: Any) -> Any:
        with deadline_scope(_deadline_of(context)):
            return await behaviour(request, context)

    return wrapped


def _stream_response(behaviour: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(request: Any, context: Any) -> AsyncIterator[Any]:
        with deadline_scope(_deadline_of(context)):
            result = behaviour(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:  # a coroutine that writes with context.write()
                await result

    return wrapped


class DeadlineInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Publishes the incoming deadline to outgoing mesh-channel calls made by the handler."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_unary_response(handler.unary_unary), **kwargs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_unary_response(handler.stream_unary), **kwargs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_stream_response(handler.unary_stream), **kwargs)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(_stream_response(handler.stream_stream), **kwargs)
        return handler
