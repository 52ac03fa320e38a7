"""Calls on a MeshChannel: pick an endpoint per call, fail over when the connection failed.

Unary-request calls (unary-unary, unary-stream) fail over transparently: a transport failure
(connection refused or reset, see :func:`mesh.balancer.base.is_transport_failure`) before any
response arrived is retried on another endpoint, up to ``max_attempts`` and never past the
deadline. Streaming-request calls cannot replay what the caller already sent, so they only
avoid endpoints whose connection is known to be down; general retries belong to the
resilience layer.

A mesh unary call starts when it is awaited and drives its attempts inline, without a task
of its own: grpc.aio already runs one task per call, and the picker's budget is the gap to
a bare channel (bench/mesh_overhead.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from typing import Any

import grpc
import grpc.aio

from mesh.balancer.base import Done, Outcome
from mesh.channel_pool import Endpoint, EndpointPool, no_endpoint_error
from mesh.errors import NoHealthyEndpoint

CANCELLED = Outcome(grpc.StatusCode.CANCELLED)
_OK = grpc.StatusCode.OK
monotonic = time.monotonic


class CallSpec:
    """What a stub method needs per endpoint: cached per-endpoint multicallables and policy."""

    __slots__ = (
        "_cache",
        "deserializer",
        "kind",
        "max_attempts",
        "method",
        "pool",
        "registered",
        "resolve_timeout",
        "serializer",
    )

    def __init__(
        self,
        pool: EndpointPool,
        kind: str,
        method: str,
        serializer: Any,
        deserializer: Any,
        registered: bool,
        max_attempts: int,
        resolve_timeout: float,
    ) -> None:
        self.pool = pool
        self.kind = kind
        self.method = method
        self.serializer = serializer
        self.deserializer = deserializer
        self.registered = registered
        self.max_attempts = max_attempts
        self.resolve_timeout = resolve_timeout
        self._cache: dict[str, tuple[Any, Any]] = {}

    def callable_for(self, endpoint: Endpoint) -> Any:
        """The grpc multicallable for this method on ``endpoint``'s channel (built once)."""
        target = endpoint.instance.target
        entry = self._cache.get(target)
        if entry is None or entry[0] is not endpoint.channel:
            if len(self._cache) > 2 * len(self.pool.endpoints) + 8:
                self._cache.clear()  # drop callables of channels that have left
            factory = getattr(endpoint.channel, self.kind)
            entry = (
                endpoint.channel,
                factory(self.method, self.serializer, self.deserializer, _registered_method=self.registered),
            )
            self._cache[target] = entry
        return entry[1]


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _deadline_error() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="Deadline Exceeded",
    )


def _smaller(a: float, b: float | None) -> float:
    return a if b is None else min(a, b)


async def choose(
    spec: CallSpec,
    exclude: set[str],
    deadline: float | None,
    wait_for_ready: bool,
    last_error: BaseException | None,
) -> tuple[Endpoint, Done]:
    """The slow path of picking: wait for the first resolution, or for endpoints when asked to."""
    pool = spec.pool
    while True:
        try:
            return pool.pick(exclude)
        except NoHealthyEndpoint:
            pass
        remaining = _remaining(deadline)
        if remaining is not None and remaining <= 0:
            raise _deadline_error() if wait_for_ready or last_error is None else last_error
        if not pool.resolved:
            within = remaining if wait_for_ready else _smaller(spec.resolve_timeout, remaining)
            if not await pool.wait_changed(0, within) and not wait_for_ready:
                raise no_endpoint_error(pool.name)
            continue
        if not wait_for_ready:
            raise last_error if exclude and last_error else no_endpoint_error(pool.name)
        if exclude and pool.endpoints:
            await asyncio.sleep(_smaller(0.1, remaining))  # all failed once: pause, then retry all
            exclude.clear()
            continue
        await pool.wait_changed(pool.version, remaining)


class MeshCall:
    """Status plumbing shared by the unary-request calls: the final state of the last attempt."""

    def __init__(
        self,
        spec: CallSpec,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> None:
        self._spec = spec
        self._request = request
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._metadata = metadata
        self._credentials = credentials
        self._wait_for_ready = bool(wait_for_ready)
        self._compression = compression
        self._call: Any = None
        self._error: BaseException | None = None
        self._finished = False
        self._started = False
        self._cancel_requested = False
        self._waiter: asyncio.Future[None] | None = None
        self._callbacks: list[Callable[[Any], None]] | None = None
        self._task: asyncio.Task[Any] | None = None

    def _start_attempt(self, endpoint: Endpoint) -> Any:
        if self._cancel_requested:
            raise asyncio.CancelledError()
        remaining = _remaining(self._deadline)
        if remaining is not None and remaining <= 0:
            raise _deadline_error()
        self._call = self._spec.callable_for(endpoint)(
            self._request,
            timeout=remaining,
            metadata=self._metadata,
            credentials=self._credentials,
            compression=self._compression,
        )
        return self._call

    def _may_fail_over(self, attempts: int) -> bool:
        if self._cancel_requested:
            return False
        remaining = _remaining(self._deadline)
        if remaining is not None and remaining <= 0:
            return False
        return self._wait_for_ready or attempts < self._spec.max_attempts

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
        return self._finished and (self._cancel_requested or isinstance(self._error, asyncio.CancelledError))

    def done(self) -> bool:
        """Whether the call has ended."""
        return self._finished

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline, or None without one."""
        remaining = _remaining(self._deadline)
        return None if remaining is None else max(0.0, remaining)

    def cancel(self) -> bool:
        """Cancel the call (the current attempt, and any further ones)."""
        if self._finished:
            return False
        self._cancel_requested = True
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
        if self._cancel_requested or isinstance(error, asyncio.CancelledError):
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
    if not task.cancelled():
        task.exception()  # an error is re-raised to whoever awaits the call; do not log it twice


class MeshUnaryUnaryCall(MeshCall):
    """A unary-unary call with endpoint failover; awaiting it returns the response."""

    _result: Any = None

    def __await__(self) -> Generator[Any, None, Any]:
        if not self._started:
            self._started = True
            return self._drive().__await__()
        return self._result_when_done().__await__()

    def _drive_in_background(self) -> None:
        if not self._started:
            self._started = True
            self._task = asyncio.ensure_future(self._drive())
            self._task.add_done_callback(retrieve_exception)

    async def _drive(self) -> Any:
        # The whole attempt loop in one coroutine, the only one per call: this is the hot path.
        spec = self._spec
        pool = spec.pool
        exclude: set[str] | None = None
        last_error: BaseException | None = None
        attempts = 0
        try:
            while True:
                try:
                    endpoint, done = pool.pick(exclude or ())
                except NoHealthyEndpoint:
                    if exclude is None:
                        exclude = set()
                    endpoint, done = await choose(
                        spec, exclude, self._deadline, self._wait_for_ready, last_error
                    )
                attempts += 1
                if self._cancel_requested:
                    done(CANCELLED)
                    raise asyncio.CancelledError()
                deadline = self._deadline
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    done(Outcome(grpc.StatusCode.DEADLINE_EXCEEDED))
                    raise _deadline_error()
                call = self._call = spec.callable_for(endpoint)(
                    self._request,
                    timeout=remaining,
                    metadata=self._metadata,
                    credentials=self._credentials,
                    compression=self._compression,
                )
                started = monotonic()
                try:
                    response = await call
                except grpc.aio.AioRpcError as error:
                    outcome = Outcome.from_status(error.code(), error.details(), monotonic() - started)
                    done(outcome)
                    if outcome.transport_failure and self._may_fail_over(attempts):
                        if exclude is None:
                            exclude = set()
                        exclude.add(endpoint.instance.target)
                        last_error = error
                        continue
                    raise
                except BaseException:
                    done(CANCELLED)
                    raise
                done(Outcome(_OK, monotonic() - started))
                break
        except BaseException as error:
            self._finish(error)
            raise
        self._result = response
        self._finish()
        return response

    async def _result_when_done(self) -> Any:
        await self._wait_finished()
        if self._error is not None:
            raise self._error
        return self._result
