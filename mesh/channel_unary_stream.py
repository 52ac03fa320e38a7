"""Unary-stream calls on a MeshChannel: fail over and retry until the first response message.

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
from mesh.channel_calls import CANCELLED, MeshCall, retrieve_exception
from mesh.channel_resilience import circuit_open_error, retry_delay
from mesh.channel_spec import deadline_error
from mesh.resilience import CallOutcome, Permit, stream_retryable


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
        spec = self._spec
        res = spec.resilience
        exclude: set[str] = set()
        tried: set[str] = set()
        last_error: BaseException | None = None
        attempts = 0
        tries = 1
        began = time.monotonic()
        permit = None
        self._observe()
        try:
            if self._deadline is not None and self._deadline <= began:
                raise deadline_error()
            permit = res.breaker.allow()
            if permit is None:
                res.fail_fast += 1
                raise circuit_open_error(spec.pool.name)
            if spec.policy.retry_enabled:
                res.budget.record_request()
        except BaseException as error:
            self._finish(error)
            raise
        while True:
            try:
                endpoint, done = await self._pick_slow(exclude, tried, last_error)
            except BaseException as error:
                self._end(permit, error, began)
                raise
            breaker = res.endpoint_breaker(endpoint.instance.target)
            endpoint_permit = breaker.allow()
            if endpoint_permit is None:  # its half-open trial is taken: pick another
                done(CANCELLED)
                continue
            attempts += 1
            started = time.monotonic()
            received = False
            try:
                async for message in self._start_attempt(endpoint, attempts):
                    received = True
                    yield message
            except grpc.aio.AioRpcError as error:
                elapsed = time.monotonic() - started
                self._attempt_end(error.code())
                outcome = Outcome.from_status(error.code(), error.details(), elapsed)
                done(outcome)
                breaker.record(endpoint_permit, CallOutcome(error.code().name, elapsed))
                last_error = error
                if not stream_retryable(received):
                    self._end(permit, error, began)
                    raise
                if outcome.transport_failure and self._may_fail_over(len(exclude) + 1):
                    exclude.add(endpoint.instance.target)
                    continue
                delay = None
                if not self._cancel_requested:
                    delay = retry_delay(res, spec.policy, self._request, error, tries, self._deadline)
                if delay is None:
                    self._end(permit, error, began)
                    raise
                tries += 1
                tried.add(endpoint.instance.target)
                if delay > 0:
                    await asyncio.sleep(delay)
                continue
            except BaseException as error:  # cancelled, or the reader closed the iterator early
                if isinstance(error, GeneratorExit):
                    self._cancel_requested = True
                if self._call is not None:
                    self._call.cancel()
                self._attempt_end(grpc.StatusCode.CANCELLED)
                done(CANCELLED)
                breaker.release(endpoint_permit)
                self._end(permit, error, began)
                raise
            elapsed = time.monotonic() - started
            self._attempt_end(grpc.StatusCode.OK)
            done(Outcome.success(elapsed))
            breaker.record(endpoint_permit, CallOutcome("OK", elapsed))
            self._end(permit, None, began)
            return

    def _end(self, permit: Permit, error: BaseException | None, began: float) -> None:
        """Report the call to the service breaker, then finish it."""
        breaker = self._spec.resilience.breaker
        if error is None:
            breaker.record(permit, CallOutcome("OK", time.monotonic() - began))
        elif isinstance(error, grpc.aio.AioRpcError):
            breaker.record(permit, CallOutcome(error.code().name, time.monotonic() - began))
        else:
            breaker.release(permit)
        self._finish(error)
