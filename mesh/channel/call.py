"""What the unary-request calls share: the grpc.aio call surface over the engine's result.

A mesh call is several attempts behind one object: its status, metadata and done
callbacks are those of the attempt that ended it, and they are final only once the engine
has ended the call (:meth:`MeshCall._finish`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from mesh.channel.attempts import AttemptEngine


class MeshCall(AttemptEngine):
    """Status plumbing shared by the unary-request calls: the final state of the last attempt."""

    _call: Any = None  # the grpc.aio call of the current (or last) attempt
    _error: BaseException | None = None
    _finished = False
    _driving = False
    _waiter: asyncio.Future[None] | None = None
    _callbacks: list[Callable[[Any], None]] | None = None
    _task: asyncio.Task[Any] | None = None

    def _finish(self, error: BaseException | None = None) -> None:
        self._finished = True
        self._error = error
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._callbacks:
            callbacks, self._callbacks = self._callbacks, None
            for callback in callbacks:
                callback(self)

    def _drive_in_background(self) -> None:
        raise NotImplementedError

    async def _wait_finished(self) -> None:
        if self._finished:
            return
        self._drive_in_background()
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)

    def cancelled(self) -> bool:
        """Whether the call ended because it was cancelled."""
        return self._finished and (self._cancelled or isinstance(self._error, asyncio.CancelledError))

    def done(self) -> bool:
        """Whether the call has ended."""
        return self._finished

    def cancel(self) -> bool:
        """Cancel the call (the current attempt, and any further ones)."""
        if self._finished:
            return False
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            self._task.cancel()
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Run ``callback(call)`` when the call ends."""
        if self._finished:
            callback(self)
        else:
            if self._callbacks is None:
                self._callbacks = []
            self._callbacks.append(callback)

    async def code(self) -> grpc.StatusCode:
        """The final status code (waits for the end of the call)."""
        await self._wait_finished()
        error = self._error
        if isinstance(error, grpc.aio.AioRpcError):
            return error.code()
        if self._cancelled or isinstance(error, asyncio.CancelledError):
            return grpc.StatusCode.CANCELLED
        return grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK

    async def details(self) -> str:
        """The final status details."""
        await self._wait_finished()
        if isinstance(self._error, grpc.aio.AioRpcError):
            return str(self._error.details() or "")
        if self._call is not None and self._error is None:
            return str(await self._call.details())
        return "" if self._error is None else str(self._error)

    async def initial_metadata(self) -> Any:
        """Initial metadata of the attempt that ended the call."""
        await self._wait_finished()
        if isinstance(self._error, grpc.aio.AioRpcError):
            return self._error.initial_metadata() or grpc.aio.Metadata()
        return await self._call.initial_metadata() if self._call is not None else grpc.aio.Metadata()

    async def trailing_metadata(self) -> Any:
        """Trailing metadata of the attempt that ended the call."""
        await self._wait_finished()
        if isinstance(self._error, grpc.aio.AioRpcError):
            return self._error.trailing_metadata() or grpc.aio.Metadata()
        return await self._call.trailing_metadata() if self._call is not None else grpc.aio.Metadata()

    async def wait_for_connection(self) -> None:
        """Unary requests are sent at once; this waits for the end of the call."""
        await self._wait_finished()


def retrieve_exception(task: asyncio.Task[Any]) -> None:
    """Done callback of a background drive: the error is re-raised to whoever awaits the call."""
    if not task.cancelled():
        task.exception()
