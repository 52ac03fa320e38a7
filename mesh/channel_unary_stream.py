"""Unary-stream calls on a MeshChannel: fail over until the first response message arrives.

Once a message has reached the caller the stream cannot move to another endpoint without
the caller seeing a seam, so failover stops there. Status methods awaited before (or
without) reading make the call read into a buffer, as grpc.aio's own calls do, so a
caller never waits on itself.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import grpc.aio

from mesh.balancer.base import Outcome
from mesh.channel_calls import CANCELLED, MeshCall, choose, retrieve_exception
from mesh.errors import NoHealthyEndpoint


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
            self._started = True
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
            self._started = True
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
        pool = self._spec.pool
        exclude: set[str] = set()
        last_error: BaseException | None = None
        attempts = 0
        while True:
            try:
                try:
                    endpoint, done = pool.pick(exclude)
                except NoHealthyEndpoint:
                    endpoint, done = await choose(
                        self._spec, exclude, self._deadline, self._wait_for_ready, last_error
                    )
            except BaseException as error:
                self._finish(error)
                raise
            attempts += 1
            started = time.monotonic()
            received = False
            try:
                async for message in self._start_attempt(endpoint):
                    received = True
                    yield message
            except grpc.aio.AioRpcError as error:
                outcome = Outcome.from_status(error.code(), error.details(), time.monotonic() - started)
                done(outcome)
                if not received and outcome.transport_failure and self._may_fail_over(attempts):
                    exclude.add(endpoint.instance.target)
                    last_error = error
                    continue
                self._finish(error)
                raise
            except BaseException as error:  # cancelled, or the reader closed the iterator early
                if isinstance(error, GeneratorExit):
                    self._cancel_requested = True
                if self._call is not None:
                    self._call.cancel()
                done(CANCELLED)
                self._finish(error)
                raise
            done(Outcome.success(time.monotonic() - started))
            self._finish()
            return
