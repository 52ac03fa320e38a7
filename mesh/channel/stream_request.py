"""Streaming-request calls on a MeshChannel (stream-unary and stream-stream).

What the caller has already written cannot be replayed on another endpoint, so these calls
make exactly one attempt: the engine (:mod:`mesh.channel.attempts`) still picks it (avoiding
endpoints whose connection is known to be down or whose breaker is open), applies the
service breaker and the inherited deadline, and records its outcome once. The object is a
thin proxy: the real grpc.aio call is opened on first use (so picking can wait for the
first registry answer) and then does all the work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import grpc
import grpc.aio

from mesh.channel.attempts import AttemptEngine


class MeshStreamRequestCall(AttemptEngine):
    """Proxy for a stream-unary (await it) or stream-stream (iterate or read it) call."""

    _call: Any = None  # the grpc.aio call, once opened
    _opening: asyncio.Task[None] | None = None
    _open_error: BaseException | None = None
    _callbacks: list[Callable[[Any], None]] | None = None
    _report_task: asyncio.Task[None] | None = None  # kept referenced until it has run

    # -- opening the underlying call -------------------------------------------------------

    def _finish(self, error: BaseException | None) -> None:
        """The engine's end of the call; once the grpc call is open, that call's callback reports."""
        if self._call is None:
            self._open_error = error
            self._run_callbacks()

    def _run_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, None
        for callback in callbacks or ():
            callback(self)

    async def _open(self) -> None:
        self._opened(await self._start_later())

    def _opened(self, call: Any) -> None:
        self._call = call
        call.add_done_callback(self._attempt_over)

    def _attempt_over(self, finished: Any) -> None:
        self._report_task = asyncio.ensure_future(self._report_outcome(finished))
        self._run_callbacks()

    async def _report_outcome(self, finished: Any) -> None:
        try:
            code, details = await finished.code(), await finished.details()
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            code, details = grpc.StatusCode.CANCELLED, None
        if code is grpc.StatusCode.OK:
            self._succeeded()
        elif code is grpc.StatusCode.CANCELLED and (self._cancelled or finished.cancelled()):
            self._abandoned(asyncio.CancelledError())
        else:
            error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
            # Not replayable: the engine ends the call and raises; the caller sees the real call's error.
            with contextlib.suppress(grpc.aio.AioRpcError):
                self._failed(error, replayable=False)

    async def _ready(self) -> Any:
        if self._call is not None:
            return self._call
        if self._cancelled:
            raise asyncio.CancelledError()
        if self._open_error is not None:
            raise self._open_error
        if self._opening is None:
            call = self._start()  # in the caller's context: the call's span has its parent
            if call is not None:
                self._opened(call)
                return call
            self._opening = asyncio.ensure_future(self._open())
        assert self._opening is not None
        await asyncio.shield(self._opening)
        return self._call

    # -- the grpc.aio call surface ---------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Any]:
        return self._response().__await__()

    async def _response(self) -> Any:
        return await (await self._ready())

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        call = await self._ready()
        async for message in call:
            yield message

    async def read(self) -> Any:
        """The next response message, or ``grpc.aio.EOF``."""
        return await (await self._ready()).read()

    async def write(self, request: Any) -> None:
        """Send one request message."""
        await (await self._ready()).write(request)

    async def done_writing(self) -> None:
        """Signal the end of the request stream."""
        await (await self._ready()).done_writing()

    async def wait_for_connection(self) -> None:
        """Wait until the underlying call has its connection."""
        await (await self._ready()).wait_for_connection()

    async def code(self) -> grpc.StatusCode:
        """The final status code."""
        try:
            call = await self._ready()
        except grpc.aio.AioRpcError as error:
            return error.code()
        except asyncio.CancelledError:
            return grpc.StatusCode.CANCELLED
        return await call.code()

    async def details(self) -> str:
        """The final status details."""
        try:
            call = await self._ready()
        except grpc.aio.AioRpcError as error:
            return str(error.details() or "")
        return str(await call.details())

    async def initial_metadata(self) -> Any:
        """The server's initial metadata."""
        return await (await self._ready()).initial_metadata()

    async def trailing_metadata(self) -> Any:
        """The server's trailing metadata."""
        return await (await self._ready()).trailing_metadata()

    def cancel(self) -> bool:
        """Cancel the call."""
        if self._call is not None:
            self._cancelled = True
            return bool(self._call.cancel())
        if self.done():
            return False
        self._cancelled = True
        if self._opening is not None:
            self._opening.cancel()
        # Ended here, not by the opening task: a task cancelled before it ran never runs.
        self._end_with(asyncio.CancelledError())
        return True

    def cancelled(self) -> bool:
        """Whether the call was cancelled."""
        return bool(self._call.cancelled()) if self._call is not None else self._cancelled

    def done(self) -> bool:
        """Whether the call has ended."""
        if self._call is not None:
            return bool(self._call.done())
        return self._cancelled or self._open_error is not None

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Run ``callback(call)`` when the call ends."""
        if self.done():
            callback(self)
        else:
            if self._callbacks is None:
                self._callbacks = []
            self._callbacks.append(callback)
