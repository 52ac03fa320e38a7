"""Calls on a MeshChannel: pick an endpoint per call, fail over when the connection failed.

Unary-request calls (unary-unary, unary-stream) fail over transparently: a transport failure
(connection refused or reset, see :func:`mesh.balancer.base.is_transport_failure`) before any
response arrived is retried on another endpoint, up to ``max_attempts`` and never past the
deadline. On top of that, the service's policy (:mod:`mesh.channel_resilience`) may retry
a failed attempt: only a retryable status, only for a request safe to repeat, within the
retry budget, after the backoff or the server's pushback, on an endpoint not tried yet
where one exists, never past the deadline. Endpoints whose breaker is open are not picked;
when the service breaker or every endpoint breaker refuses, the call fails fast with
UNAVAILABLE ``circuit open for 'name'``. Streaming-request calls cannot replay what the
caller already sent, so they only avoid endpoints known to be down or open.

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
from mesh.channel_pool import Endpoint
from mesh.channel_resilience import circuit_open_error, retry_delay, with_attempt
from mesh.channel_spec import CallSpec, choose, deadline_error, remaining_time
from mesh.deadline import call_deadline
from mesh.errors import NoHealthyEndpoint
from mesh.observer import CallObservation, code_of
from mesh.resilience import CallOutcome, Permit

CANCELLED = Outcome(grpc.StatusCode.CANCELLED)
_OK = grpc.StatusCode.OK
monotonic = time.monotonic


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
        self._deadline = call_deadline(timeout, spec.policy.timeout)
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
        self._obs: CallObservation | None = None  # telemetry of this call (mesh.observer)

    def _observe(self) -> None:
        """Start the call's observation (in the caller's context: its span is the parent)."""
        observer = self._spec.observer
        if observer is not None:
            self._obs = observer.call_start(self._metadata)

    def _attempt_metadata(self, attempt: int, target: str) -> Any:
        metadata = self._metadata if attempt == 1 else with_attempt(self._metadata, attempt)
        obs = self._obs
        return metadata if obs is None else obs.attempt_start(attempt, target, metadata)

    def _attempt_end(self, code: grpc.StatusCode) -> None:
        if self._obs is not None:
            self._obs.attempt_end(code)

    def _start_attempt(self, endpoint: Endpoint, attempt: int = 1) -> Any:
        if self._cancel_requested:
            raise asyncio.CancelledError()
        now = monotonic()
        if self._deadline is not None and self._deadline <= now:
            raise deadline_error()
        self._call = self._spec.callable_for(endpoint)(
            self._request,
            timeout=self._spec.policy.retry.attempt_timeout(now, self._deadline),
            metadata=self._attempt_metadata(attempt, endpoint.instance.target),
            credentials=self._credentials,
            compression=self._compression,
        )
        return self._call

    async def _pick_slow(
        self, exclude: set[str], tried: set[str], last_error: BaseException | None
    ) -> tuple[Endpoint, Done]:
        """Pick avoiding open breakers, preferring endpoints this call has not tried yet.

        When every endpoint's breaker refuses, the call fails fast with ``circuit open``.
        """
        pool = self._spec.pool
        blocked = self._spec.resilience.blocked()
        avoid = exclude | blocked
        for candidates in (avoid | tried, avoid) if tried else (avoid,):
            try:
                return pool.pick(candidates)
            except NoHealthyEndpoint:
                pass
        endpoints = pool.endpoints
        if blocked and endpoints and all(e.target in blocked for e in endpoints):
            self._spec.resilience.fail_fast += 1
            raise circuit_open_error(pool.name)
        return await choose(
            self._spec,
            exclude | blocked if blocked else exclude,
            self._deadline,
            self._wait_for_ready,
            last_error,
        )

    def _may_fail_over(self, attempts: int) -> bool:
        if self._cancel_requested:
            return False
        remaining = remaining_time(self._deadline)
        if remaining is not None and remaining <= 0:
            return False
        return self._wait_for_ready or attempts < self._spec.max_attempts

    def _finish(self, error: BaseException | None = None) -> None:
        self._finished = True
        self._error = error
        obs = self._obs
        if obs is not None:
            self._obs = None
            obs.call_end(code_of(error, self._cancel_requested))
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

    def timeremaining_time(self) -> float | None:
        """Seconds left before the deadline, or None without one."""
        remaining = remaining_time(self._deadline)
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
        res = spec.resilience
        exclude: set[str] | None = None  # refused at the transport: never again for this call
        tried: set[str] | None = None  # failed with a retryable status: others first
        last_error: BaseException | None = None
        attempts = 0
        tries = 1  # attempts the retry policy counts (transparent failover aside)
        permit: Permit | None = None
        began = monotonic()
        observer = spec.observer
        obs = self._obs = None if observer is None else observer.call_start(self._metadata)
        try:
            deadline = self._deadline
            if deadline is not None and deadline <= began:
                raise deadline_error()  # nothing sent: the caller's time is already gone
            permit = res.breaker.allow()
            if permit is None:
                res.fail_fast += 1
                raise circuit_open_error(pool.name)
            if spec.policy.retry_enabled:
                res.budget.record_request()
            while True:
                if exclude is None and tried is None and not res.unsettled:
                    try:
                        endpoint, done = pool.pick(())
                    except NoHealthyEndpoint:
                        exclude = set()
                        endpoint, done = await self._pick_slow(exclude, set(), last_error)
                else:
                    exclude = exclude if exclude is not None else set()
                    endpoint, done = await self._pick_slow(exclude, tried or set(), last_error)
                target = endpoint.instance.target
                breaker = res.endpoint_breaker(target)
                endpoint_permit = breaker.allow()
                if endpoint_permit is None:  # its half-open trial is taken: pick another
                    done(CANCELLED)
                    continue
                attempts += 1
                if self._cancel_requested:
                    done(CANCELLED)
                    breaker.release(endpoint_permit)
                    raise asyncio.CancelledError()
                now = monotonic()
                if deadline is not None and deadline <= now:
                    done(Outcome(grpc.StatusCode.DEADLINE_EXCEEDED))
                    breaker.release(endpoint_permit)
                    raise deadline_error()
                metadata = self._metadata if attempts == 1 else with_attempt(self._metadata, attempts)
                if obs is not None:
                    metadata = obs.attempt_start(attempts, target, metadata)
                call = self._call = spec.callable_for(endpoint)(
                    self._request,
                    timeout=spec.policy.retry.attempt_timeout(now, deadline),
                    metadata=metadata,
                    credentials=self._credentials,
                    compression=self._compression,
                )
                try:
                    response = await call
                except grpc.aio.AioRpcError as error:
                    elapsed = monotonic() - now
                    if obs is not None:
                        obs.attempt_end(error.code())
                    outcome = Outcome.from_status(error.code(), error.details(), elapsed)
                    done(outcome)
                    breaker.record(endpoint_permit, CallOutcome(error.code().name, elapsed))
                    last_error = error
                    if outcome.transport_failure:
                        if exclude is None:
                            exclude = set()
                        if self._may_fail_over(len(exclude) + 1):
                            exclude.add(target)
                            continue
                    delay = None
                    if not self._cancel_requested:
                        delay = retry_delay(res, spec.policy, self._request, error, tries, deadline)
                    if delay is None:
                        raise
                    tries += 1
                    if tried is None:
                        tried = set()
                    tried.add(target)
                    if delay > 0:
                        await asyncio.sleep(delay)
                    continue
                except BaseException:
                    if obs is not None:
                        obs.attempt_end(grpc.StatusCode.CANCELLED)
                    done(CANCELLED)
                    breaker.release(endpoint_permit)
                    raise
                elapsed = monotonic() - now
                if obs is not None:
                    obs.attempt_end(_OK)
                done(Outcome(_OK, elapsed))
                breaker.record(endpoint_permit, CallOutcome("OK", elapsed))
                break
        except grpc.aio.AioRpcError as error:
            if permit is not None:
                res.breaker.record(permit, CallOutcome(error.code().name, monotonic() - began))
            self._finish(error)
            raise
        except BaseException as error:
            if permit is not None:
                res.breaker.release(permit)
            self._finish(error)
            raise
        res.breaker.record(permit, CallOutcome("OK", monotonic() - began))
        self._result = response
        self._finish()
        return response

    async def _result_when_done(self) -> Any:
        await self._wait_finished()
        if self._error is not None:
            raise self._error
        return self._result
