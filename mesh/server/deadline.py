"""A server interceptor that keeps each call's deadline in :mod:`mesh.deadline`'s contextvar.

Why here and not in each servicer: propagation only works if *every* handler publishes its
deadline, so :class:`~mesh.server.runtime.MeshServer` puts this interceptor first (outermost)
on every server. grpc.aio runs each call in its own task, so the value set while the handler
runs is that call's alone. The per-call-type wrapping (a unary response is awaited, a
response stream is iterated) is :func:`mesh.server.wrap.wrap_service`'s, shared with the
telemetry interceptors: the deadline is published when the call starts and withdrawn when it
finishes, whatever its status.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import grpc
import grpc.aio

from mesh.deadline import Deadline, deadline_scope
from mesh.rpc import Rpc, RpcCache
from mesh.server.wrap import Context, Continuation, Start, scope_of, wrap_handler


def deadline_of(context: Context) -> Deadline | None:
    """The incoming call's deadline, or ``None`` when the caller set none."""
    left = context.time_remaining()
    return None if left is None else Deadline.after(left)


class _Published:
    """The call's deadline is the incoming deadline from creation until :meth:`done`."""

    __slots__ = ("_scope",)

    def __init__(self, deadline: Deadline | None) -> None:
        self._scope: AbstractContextManager[None] = deadline_scope(deadline)
        self._scope.__enter__()

    def done(self, code: grpc.StatusCode) -> None:
        self._scope.__exit__(None, None, None)


class DeadlineInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped (Any) for mypy
    """Publishes the incoming deadline to outgoing mesh-channel calls made by the handler."""

    def __init__(self) -> None:
        self._rpcs = RpcCache()

    def _start(self, rpc: Rpc, context: Context) -> _Published:
        return _Published(deadline_of(context))

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        return self.wrap_handler(handler_call_details.method, await continuation(handler_call_details))

    def scope_for(self, method: str) -> Start | None:
        """This layer's scope for a call of ``method`` (mesh.server.wrap.ScopeLayer)."""
        return scope_of(method, self._start)

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        return wrap_handler(method, handler, self._rpcs, self._start)
