"""Wrap a server method handler so a scope sees every call start and finish with its code.

Every server interceptor of the stack :class:`~mesh.server.runtime.MeshServer` builds needs
the same thing: run something before the handler, and afterwards know the status code the
client will see. The deadline (:mod:`mesh.server.deadline`) sets its contextvar and resets
it; tracing, metrics and RPC logs open a span, a timer, a log line and close them with the
code. One wrapper per call type lives here once: a unary response is awaited, a response
stream is iterated, and mixing the two in one wrapper breaks one of them. The handler's
code is not returned: it is the code set by ``context.abort``/``set_code`` (read back with
``context.code()``), ``CANCELLED`` when the task is cancelled, ``UNKNOWN`` for any other
exception (what grpc.aio answers then), or ``OK``; an exception raised once the core has ended
the call (its deadline passed) is the code the client got from the core, not ``UNKNOWN``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc
import grpc.aio

from mesh.rpc import HEALTH_PREFIX, Rpc, RpcCache, call_type

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
    if context.done():
        # grpc core ended the call before the handler answered (its deadline passed, or the
        # client went away): the status could not be sent (grpc raises ExecuteBatchError),
        # and the client saw the core's, not the UNKNOWN this exception would otherwise be.
        left = context.time_remaining()
        return (
            grpc.StatusCode.DEADLINE_EXCEEDED if left is not None and left <= 0 else grpc.StatusCode.CANCELLED
        )
    return grpc.StatusCode.UNKNOWN


_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class HandlerLayer(Protocol):
    """A layer of the server stack: wraps one method's handler, once, when it is added.

    Every layer is also a ``grpc.aio.ServerInterceptor`` (its ``intercept_service`` calls
    ``wrap_handler`` on what the continuation found), so it works on a plain grpc.aio server;
    :class:`~mesh.server.runtime.MeshServer` calls ``wrap_handler`` itself, once per method
    (see :mod:`mesh.server.layered`).
    """

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None: ...


class ScopeLayer(HandlerLayer, Protocol):
    """A layer that only scopes each call (a start, then ``done`` with the code): several of
    them in a row are applied as one wrapper (:func:`wrap_scopes`, :mod:`mesh.server.layered`)."""

    def scope_for(self, method: str) -> Start | None:
        """What starts this layer's scope for a call of ``method``; None: the layer skips it."""
        ...


def scope_of(method: str, start: Start, *, skip_health: bool = False) -> Start | None:
    """``start``, unless ``skip_health`` leaves ``method`` alone (see :func:`wrap_handler`)."""
    return None if skip_health and method.startswith(HEALTH_PREFIX) else start


def wrap_scopes(
    method: str, handler: grpc.RpcMethodHandler | None, rpcs: RpcCache, starts: Sequence[Start]
) -> grpc.RpcMethodHandler | None:
    """``handler`` with every ``start`` scoping each call, ``starts[0]`` outermost.

    What one wrapper per start, nested, would do, in one coroutine: the scopes open in order
    and close in reverse with the call's code, and one that fails to open closes those already
    open. Four nested wrappers cost a coroutine, a ``status_of`` and an exception frame each on
    every call (bench/server_instructions.py).
    """
    if handler is None or not starts:
        return handler
    rpc = rpcs.get(method, call_type(handler.request_streaming, handler.response_streaming))
    ordered = tuple(starts)
    return rewrap(
        handler, lambda b: _unary_scopes(b, rpc, ordered), lambda b: _streaming_scopes(b, rpc, ordered)
    )


def wrap_handler(
    method: str,
    handler: grpc.RpcMethodHandler | None,
    rpcs: RpcCache,
    start: Start,
    *,
    skip_health: bool = False,
) -> grpc.RpcMethodHandler | None:
    """``handler`` (of ``method``) wrapped so ``start`` scopes each call.

    ``skip_health`` leaves ``grpc.health.v1`` unwrapped: Consul checks every instance every
    second, and a span or a log line per check would drown the real calls.
    """
    scope = scope_of(method, start, skip_health=skip_health)
    return wrap_scopes(method, handler, rpcs, [scope] if scope is not None else [])


async def wrap_service(
    continuation: Continuation,
    details: grpc.HandlerCallDetails,
    rpcs: RpcCache,
    start: Start,
    *,
    skip_health: bool = False,
) -> grpc.RpcMethodHandler | None:
    """The handler ``continuation`` finds, wrapped as :func:`wrap_handler` does (interceptor form)."""
    handler = await continuation(details)
    return wrap_handler(details.method, handler, rpcs, start, skip_health=skip_health)


Behaviour = Callable[..., Any]


def rewrap(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Behaviour], Behaviour],
    streaming: Callable[[Behaviour], Behaviour],
) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour wrapped: by ``unary`` when it answers one response (an
    awaitable), by ``streaming`` when it answers a stream (an async generator)."""
    kinds = (
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler, unary),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler, unary),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler, streaming),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler, streaming),
    )
    for behaviour, build, wrap in kinds:
        if behaviour is not None:
            return build(
                wrap(behaviour),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


def _unary_scopes(
    behaviour: Callable[..., Any], rpc: Rpc, starts: tuple[Start, ...]
) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: Context) -> Any:
        scopes: list[Scope] = []
        try:
            for start in starts:
                scopes.append(start(rpc, context))
            response = await behaviour(request, context)
        except BaseException as error:
            _close(scopes, status_of(context, error))
            raise
        _close(scopes, status_of(context, None))
        return response

    return wrapped


def _streaming_scopes(
    behaviour: Callable[..., Any], rpc: Rpc, starts: tuple[Start, ...]
) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
        scopes: list[Scope] = []
        try:
            for start in starts:
                scopes.append(start(rpc, context))
            async for item in responses(behaviour(request, context)):
                yield item
        except BaseException as error:
            _close(scopes, status_of(context, error))
            raise
        _close(scopes, status_of(context, None))

    return wrapped


def _close(scopes: list[Scope], code: grpc.StatusCode) -> None:
    """``done`` on every open scope, innermost first, as nested wrappers would."""
    for scope in reversed(scopes):
        scope.done(code)


async def responses(result: Any) -> AsyncIterator[Any]:
    """A response-streaming handler's answer as one async iterator: an async generator's items,
    or none from a coroutine that wrote them itself with ``context.write()``."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    else:
        await result
