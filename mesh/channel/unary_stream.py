"""Unary-stream calls on a MeshChannel: the engine's attempts until the first response message.

Once a message has reached the caller the stream cannot move to another endpoint without
the caller seeing a seam, so failover stops there. Status methods awaited before (or
without) reading make the call read into a buffer, as grpc.aio's own calls do, so a
caller never waits on itself.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import grpc.aio

from mesh.channel.call import MeshCall, retrieve_exception


class _Raised:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class MeshUnaryStreamCall(MeshCall):
    """A unary-stream call; fails over only while no response message has arrived."""

    _gen: AsyncGenerator[Any, None] | None = None
    _buffer: deque[Any] | None = None
    _buffered: asyncio.Event | None = None
    _reading = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        try:
            while True:
                message = await self.read()
                if message is grpc.aio.EOF:
                    return
                yield message
        finally:
            # The caller stopped iterating early: end the call now, not when it is collected,
            # so the balancer's count of calls in flight stays true.
            if not self._finished and self._gen is not None and self._buffer is None:
                await self._gen.aclose()

    async def read(self) -> Any:
        """The next response message, or ``grpc.aio.EOF`` at the end of the stream."""
        if self._buffer is not None:
            return await self._read_buffered()
        if self._gen is None:
            self._driving = True
            self._gen = self._messages()
        self._reading = True
        try:
            return await anext(self._gen)
        except StopAsyncIteration:
            return grpc.aio.EOF
        finally:
            self._reading = False

    async def _read_buffered(self) -> Any:
        assert self._buffer is not None
        while not self._buffer:
            self._buffered = asyncio.Event()
            await self._buffered.wait()
        item = self._buffer[0]
        if item is grpc.aio.EOF or isinstance(item, _Raised):
            if isinstance(item, _Raised):
                raise item.error
            return item  # the end stays in the buffer for later reads
        return self._buffer.popleft()

    def _drive_in_background(self) -> None:
        # Someone wants the status without reading: read into a buffer for later reads.
        if self._reading or self._buffer is not None or self._finished:
            return
        self._buffer = deque()
        if self._gen is None:
            self._driving = True
            self._gen = self._messages()
        self._task = asyncio.ensure_future(self._pump(self._gen, self._buffer))
        self._task.add_done_callback(retrieve_exception)

    async def _pump(self, gen: AsyncIterator[Any], buffer: deque[Any]) -> None:
        try:
            async for message in gen:
                buffer.append(message)
                self._wake()
            buffer.append(grpc.aio.EOF)
        except BaseException as error:
            buffer.append(_Raised(error))
            raise
        finally:
            self._wake()

    def _wake(self) -> None:
        if self._buffered is not None:
            self._buffered.set()

    async def _messages(self) -> AsyncGenerator[Any, None]:
        while True:
            call = self._call = self._start() or await self._start_later()
            received = False
            try:
                async for message in call:
                    received = True
                    yield message
            except grpc.aio.AioRpcError as error:
                await self._back_off(self._failed(error, replayable=not received))  # raises to stop
                continue
            except BaseException as error:  # cancelled, or the reader closed the iterator early
                if isinstance(error, GeneratorExit):
                    self._cancelled = True
                call.cancel()
                self._abandoned(error)
                raise
            self._succeeded()
            return
