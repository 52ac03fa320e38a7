"""Wrap a server method handler so a scope sees every call start and finish with its code.

All three server concerns (tracing, metrics, RPC logs) need the same thing: run something
before the handler, and afterwards know the status code the client will see. The handler's
code is not returned: it is the code set by ``context.abort``/``set_code`` (read back with
``context.code()``), ``CANCELLED`` when the task is cancelled, ``UNKNOWN`` for any other
exception (what grpc.aio answers then), or ``OK``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc
import grpc.aio

from mesh.interceptors.rpc import Rpc, RpcCache, call_type

# grpc is untyped for mypy (follow_imports=skip): the servicer context is Any.
Context = Any


class Scope(Protocol):
    """What a concern keeps for one call; ``done`` runs exactly once."""

    def done(self, code: grpc.StatusCode) -> None: ...


Start = Callable[[Rpc, Context], Scope]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def status_of(context: Context, error: BaseException | None) -> grpc.StatusCode:
    """The status code of a finished call (see the module docstring)."""
    if error is None or isinstance(error, grpc.aio.AbortError):
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            return code
        if isinstance(code, int):
            return _BY_VALUE.get(code, grpc.StatusCode.UNKNOWN)
        return grpc.StatusCode.OK if error is None else grpc.StatusCode.UNKNOWN
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


async def wrap_service(
    continuation: Continuation,
    details: grpc.HandlerCallDetails,
    rpcs: RpcCache,
    start: Start,
) -> grpc.RpcMethodHandler | None:
    """The handler ``continuation`` finds, wrapped so ``start`` scopes each call."""
    handler = await continuation(details)
    if handler is None:
        return None
    rpc = rpcs.get(details.method, call_type(handler.request_streaming, handler.response_streaming))
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _unary(handler.unary_unary, rpc, start),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            _unary(handler.stream_unary, rpc, start),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, rpc, start),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _streaming(handler.stream_stream, rpc, start),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def _unary(behaviour: Callable[..., Any], rpc: Rpc, start: Start) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: Context) -> Any:
        scope = start(rpc, context)
        try:
            response = await behaviour(request, context)
        except BaseException as error:
            scope.done(status_of(context, error))
            raise
        scope.done(status_of(context, None))
        return response

    return wrapped


def _streaming(behaviour: Callable[..., Any], rpc: Rpc, start: Start) -> Callable[..., AsyncIterator[Any]]:
    # A response-streaming handler is an async generator, or a coroutine that uses
    # context.write(); both are served through this one async generator.
    async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
        scope = start(rpc, context)
        try:
            result = behaviour(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:
                await result
        except BaseException as error:
            scope.done(status_of(context, error))
            raise
        scope.done(status_of(context, None))

    return wrapped
