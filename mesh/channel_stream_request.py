"""Streaming-request calls on a MeshChannel (stream-unary and stream-stream).

What the caller has already written cannot be replayed on another endpoint, so these calls
do not fail over or retry. They still avoid endpoints whose connection is known to be down
or whose breaker is open, inherit the handler's deadline (:mod:`mesh.deadline`), and
report their outcome to the balancer when the underlying call ends. The object is a thin
proxy: the real grpc.aio call is created on first use (so picking can wait for the first
registry answer) and then does all the work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import grpc
import grpc.aio

from mesh.balancer.base import Done, Outcome
from mesh.channel_pool import Endpoint
from mesh.channel_spec import CallSpec, choose
from mesh.deadline import call_deadline
from mesh.errors import NoHealthyEndpoint
from mesh.observer import CallObservation, code_of


class MeshStreamRequestCall:
    """Proxy for a stream-unary (await it) or stream-stream (iterate or read it) call."""

    def __init__(
        self,
        spec: CallSpec,
        request_iterator: Any,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> None:
        self._spec = spec
        self._request_iterator = request_iterator
        self._deadline = call_deadline(timeout, spec.policy.timeout)
        self._metadata = metadata
        self._credentials = credentials
        self._wait_for_ready = bool(wait_for_ready)
        self._compression = compression
        self._call: Any = None
        self._opening: asyncio.Task[None] | None = None
        self._open_error: BaseException | None = None
        self._cancel_requested = False
        self._callbacks: list[Callable[[Any], None]] = []
        self._reports: set[asyncio.Task[None]] = set()
        self._obs: CallObservation | None = None  # telemetry of this call (mesh.observer)

    # -- opening the underlying call -------------------------------------------------------

    def _pick_now(self) -> tuple[Endpoint, Done] | None:
        pool = self._spec.pool
        try:
            return pool.pick(pool.failing_targets() | self._spec.resilience.blocked())
        except NoHealthyEndpoint:
            pass
        try:
            return pool.pick()
        except NoHealthyEndpoint:
            return None

    def _open(self, endpoint: Endpoint, done: Done) -> None:
        remaining = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        obs = self._obs
        metadata = self._metadata
        if obs is not None:
            metadata = obs.attempt_start(1, endpoint.instance.target, metadata)
        call = self._spec.callable_for(endpoint)(
            self._request_iterator,
            timeout=remaining,
            metadata=metadata,
            credentials=self._credentials,
            compression=self._compression,
        )
        self._call = call
        started = time.monotonic()

        async def report(finished: Any) -> None:
            try:
                code, details = await finished.code(), await finished.details()
            except (asyncio.CancelledError, grpc.aio.AioRpcError):
                code, details = grpc.StatusCode.CANCELLED, None
            done(Outcome.from_status(code, details, time.monotonic() - started))
            self._observed(code)

        def on_done(finished: Any) -> None:
            task = asyncio.ensure_future(report(finished))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)
            for callback in self._callbacks:
                callback(self)

        call.add_done_callback(on_done)

    async def _open_later(self) -> None:
        try:
            endpoint, done = await choose(self._spec, set(), self._deadline, self._wait_for_ready, None)
        except BaseException as error:
            self._open_error = error
            self._observed(code_of(error, self._cancel_requested))
            raise
        self._open(endpoint, done)

    def _observed(self, code: grpc.StatusCode) -> None:
        """End the call's observation (its one attempt, then the call) with ``code``."""
        obs = self._obs
        if obs is not None:
            self._obs = None
            obs.attempt_end(code)
            obs.call_end(code)

    async def _ready(self) -> Any:
        if self._call is not None:
            return self._call
        if self._cancel_requested:
            raise asyncio.CancelledError()
        if self._open_error is not None:
            raise self._open_error
        if self._opening is None:
            observer = self._spec.observer
            if observer is not None:  # started where the caller first uses the call: its context
                self._obs = observer.call_start(self._metadata)
            picked = self._pick_now()
            if picked is not None:
                self._open(*picked)
                return self._call
            self._opening = asyncio.ensure_future(self._open_later())
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
            return bool(self._call.cancel())
        self._cancel_requested = True
        if self._opening is not None:
            self._opening.cancel()
            self._observed(grpc.StatusCode.CANCELLED)  # the task may be cancelled before it ran
        return True

    def cancelled(self) -> bool:
        """Whether the call was cancelled."""
        return bool(self._call.cancelled()) if self._call is not None else self._cancel_requested

    def done(self) -> bool:
        """Whether the call has ended."""
        if self._call is not None:
            return bool(self._call.done())
        return self._cancel_requested or self._open_error is not None

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline, or None without one."""
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        """Run ``callback(call)`` when the call ends."""
        if self.done():
            callback(self)
        else:
            self._callbacks.append(callback)
