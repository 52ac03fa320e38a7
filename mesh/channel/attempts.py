"""The attempt engine: the one place that decides send / fail over / retry / stop for a call.

Every call type drives the same engine, so the rules cannot drift apart between them:

    class MeshUnaryUnaryCall(MeshCall):       # MeshCall(AttemptEngine): the grpc.aio surface
        async def _drive(self):
            call = self._start() or await self._start_later()
                        the next attempt's grpc call: the first start begins the call
                        (deadline, service breaker, budget: or fail fast); _start() sends at
                        once when nothing needs waiting for, _start_later() waits for an
                        endpoint; both end the call and raise when no attempt can be made
            self._succeeded()                 reports OK, ends the call
            delay = self._failed(error)       reports; a delay to retry after, or ends and raises
            await self._back_off(delay)       waits before the next attempt
            self._abandoned(error)            cancelled / closed by the caller: ends the call
            self._end_with(error)             ends the call with an error from outside an attempt

One attempt is in flight at a time; its state (endpoint, permit, start) lives on the engine.
Each attempt's outcome is reported exactly once, by :meth:`AttemptEngine._report`, to the
balancer (its ``Done``: outstanding count, EWMA, outlier ejection), the endpoint breaker and
the observer; the call's outcome once, by :meth:`AttemptEngine._end`, to the service
breaker and the observer. What each outcome records (docs/channel.md has the full table):

* the deadline gone before sending: nothing sent, nothing recorded;
* an attempt's own timeout (``per_attempt_timeout``) on an endpoint that does not answer:
  that endpoint's failure (its breaker, outlier ejection);
* the caller's deadline reached: not a failure for any breaker nor for outlier ejection;
  a customer who asks for 5 ms cannot open the circuit for everyone;
* cancelled by the caller: nothing recorded;
* circuit open: fail fast, not recorded (counted in ``fail_fast``);
* no endpoint: UNAVAILABLE, not recorded against anyone;
* a transport failure (refused, reset): the endpoint's failure; the call fails over to
  another endpoint at once, without using the retry policy's attempts;
* any other status: the endpoint's outcome as the breaker's codes classify it; retried
  only if the policy allows (code, idempotency, attempts, budget, deadline, and for a
  response stream only before its first message).

Every successful call passes through :meth:`start` and :meth:`succeeded`, so they are
written for speed (bench/call_instructions.py counts what a call costs): no objects beyond
the outcome records, no coroutine unless the call must wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from mesh.balancer.base import Done, Outcome, is_transport_failure
from mesh.channel.errors import circuit_open_error, deadline_error
from mesh.channel.pool import Endpoint
from mesh.channel.resilience import MethodPolicy, Resilience
from mesh.channel.selector import select
from mesh.channel.spec import CallSpec
from mesh.deadline import Deadline
from mesh.errors import NoHealthyEndpoint
from mesh.observer import CallObservation, code_of
from mesh.resilience import PUSHBACK_METADATA_KEY, CallOutcome, CircuitBreaker, Permit

log = logging.getLogger(__name__)

ATTEMPT_METADATA_KEY = "x-mesh-attempt"
_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED
_DEADLINE_EXCEEDED = grpc.StatusCode.DEADLINE_EXCEEDED
_NOT_COUNTED_CANCEL = Outcome(_CANCELLED, counted=False)
# grpc core's timer fires at or after the deadline it was given, which is never earlier than
# ours; the tolerance only absorbs float rounding between the two clocks' readings.
_DEADLINE_TOLERANCE = 0.001

Clock = Callable[[], float]


class AttemptEngine:
    """The attempts of one call; see the module docstring for the rules it applies.

    Each call type's adapter is a subclass that adds the grpc.aio call surface and defines
    :meth:`_finish` (what ending the call means to it: status, waiters, done callbacks).
    One object per RPC, built on every call's hot path: the state below starts as class
    attributes, so a call stores only what it was given and what changes.
    """

    _clock: Clock = time.monotonic  # tests give a call their own clock
    _begun = False
    _exclude: set[str] | None = None  # refused at the transport: never again
    _tried: set[str] | None = None  # failed with a retryable status: others first
    _last_error: BaseException | None = None
    _tries = 1  # attempts the retry policy counts (transparent failover aside)
    _service_permit: Permit | None = None
    _obs: CallObservation | None = None
    _cancelled = False
    _over = False
    began = 0.0
    attempts = 0  # attempts sent, failover included
    # The attempt in flight (one at a time): where it went, what it holds, how it was sent.
    endpoint: Endpoint | None = None
    _done: Done | None = None  # the balancer's feedback for this pick
    _breaker: CircuitBreaker | None = None  # the endpoint's
    _permit: Permit | None = None  # from that breaker
    started = 0.0
    timeout: float | None = None  # the caller's time left, or less

    def __init__(
        self,
        spec: CallSpec,
        request: Any,
        deadline: Deadline | None,
        metadata: Any,
        wait_for_ready: bool | None,
        credentials: Any = None,
        compression: Any = None,
    ) -> None:
        self.spec, self.request, self.deadline, self.metadata = spec, request, deadline, metadata
        self.wait_for_ready = wait_for_ready
        self._credentials, self._compression = credentials, compression  # passed on to every attempt

    def _finish(self, error: BaseException | None) -> None:
        """The call is over (``error`` None: it succeeded); each call type says what follows."""
        raise NotImplementedError

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline, or None without one."""
        deadline = self.deadline
        return None if deadline is None else max(0.0, deadline.remaining())

    # -- starting attempts -------------------------------------------------------------------

    def _start(self) -> Any:
        """The next attempt's grpc call when it can start without waiting, else None.

        The first start begins the call, in the caller's context (so the call's span has the
        caller's parent): the deadline already gone or the service circuit open fail it fast.
        Ends the call and raises when it cannot go on.
        """
        try:
            spec = self.spec
            if not self._begun:
                self._begun = True
                observer = spec.observer
                if observer is not None:
                    self._obs = observer.call_start(self.metadata)
                self.began = now = self._clock()
                deadline = self.deadline
                if deadline is not None and deadline.at <= now:
                    raise deadline_error()  # nothing sent: the caller's time is already gone
                resilience = spec.resilience
                permit = resilience.breaker.allow()
                if permit is None:
                    resilience.fail_fast += 1
                    raise circuit_open_error(spec.pool.name)
                self._service_permit = permit
                if spec.policy.retry_enabled:
                    resilience.budget.record_request()
            if self._exclude is None and self._tried is None and not spec.resilience.unsettled:
                try:
                    endpoint, done = spec.pool.pick(())
                except NoHealthyEndpoint:
                    return None
                return self._send(endpoint, done)
            return None
        except BaseException as error:
            self._end_with(error)
            raise

    async def _start_later(self) -> Any:
        """The next attempt's grpc call, waiting for an endpoint (see :mod:`.selector`)."""
        try:
            while True:
                if self._cancelled:
                    raise asyncio.CancelledError()
                if self._exclude is None:
                    self._exclude = set()
                endpoint, done = await select(
                    self.spec,
                    self._exclude,
                    self._tried or set(),
                    self.deadline,
                    bool(self.wait_for_ready),
                    self._last_error,
                    avoid_failing=self.spec.kind.startswith("stream_"),
                    clock=self._clock,
                )
                call = self._send(endpoint, done)
                if call is not None:
                    return call
        except BaseException as error:
            self._end_with(error)
            raise

    def _send(self, endpoint: Endpoint, done: Done) -> Any:
        """Send the attempt to ``endpoint`` if its breaker allows (None if not: pick again)."""
        spec = self.spec
        target = endpoint.instance.target
        resilience = spec.resilience
        breaker = resilience.breakers.get(target) or resilience.endpoint_breaker(target)
        permit = breaker.allow()
        if permit is None:  # its half-open trial is taken
            done(_NOT_COUNTED_CANCEL)
            return None
        now = self._clock()
        deadline = self.deadline
        if self._cancelled or (deadline is not None and deadline.at <= now):
            done(_NOT_COUNTED_CANCEL)  # never sent: recorded against no one
            breaker.release(permit)
            raise asyncio.CancelledError() if self._cancelled else deadline_error()
        self.attempts = number = self.attempts + 1
        metadata = self.metadata if number == 1 else with_attempt(self.metadata, number)
        obs = self._obs
        if obs is not None:
            metadata = obs.attempt_start(number, target, metadata)
        retry = spec.policy.retry
        if retry.per_attempt_timeout is None:
            timeout = None if deadline is None else deadline.at - now
        else:
            timeout = retry.attempt_timeout(now, None if deadline is None else deadline.at)
        self.endpoint, self._done, self._breaker, self._permit = endpoint, done, breaker, permit
        self.started, self.timeout = now, timeout
        try:
            return spec.callable_for(endpoint)(
                self.request,
                timeout=timeout,
                metadata=metadata,
                credentials=self._credentials,
                compression=self._compression,
            )
        except BaseException:  # refused before sending (a closed channel): give the pick back
            self._report(_NOT_COUNTED_CANCEL)
            raise

    async def _back_off(self, delay: float) -> None:
        """Wait ``delay`` seconds before the next attempt; a cancel meanwhile ends the call."""
        if delay > 0:
            try:
                await asyncio.sleep(delay)
            except BaseException as error:
                self._end_with(error)
                raise

    # -- how the attempt in flight ended ------------------------------------------------------

    def _succeeded(self) -> None:
        """The attempt succeeded: report it, and end the call with success.

        What :meth:`_report` and :meth:`_end` would record, written out once here: every
        successful call passes through, and the two calls were a third of the engine's cost
        over the loop it replaced (bench/call_instructions.py --in-process).
        """
        done, breaker, permit = self._done, self._breaker, self._permit
        if done is None or breaker is None or permit is None or self._over:
            return  # already reported and ended
        self._done = self._breaker = self._permit = None
        self._over = True
        now = self._clock()
        latency = now - self.started
        done(Outcome(_OK, latency))
        breaker.record(permit, CallOutcome("OK", latency))
        service_permit = self._service_permit
        if service_permit is not None:
            self._service_permit = None
            self.spec.resilience.breaker.record(service_permit, CallOutcome("OK", now - self.began))
        obs = self._obs
        if obs is not None:
            self._obs = None
            obs.attempt_end(_OK)
            obs.call_end(_OK)
        self._finish(None)

    def _failed(self, error: grpc.aio.AioRpcError, *, replayable: bool = True) -> float:
        """The attempt failed with a status: report it, then the delay before the next attempt.

        ``replayable`` is False once a response message reached the caller. Raises ``error``
        (after ending the call) when the call must stop here.
        """
        now = self._clock()
        code = error.code()
        deadline = self.deadline
        callers_deadline = (
            code is _DEADLINE_EXCEEDED and deadline is not None and deadline.at - now <= _DEADLINE_TOLERANCE
        )
        transport = is_transport_failure(code, error.details())
        timed_out = code is _DEADLINE_EXCEEDED and not callers_deadline
        counted = not callers_deadline
        self._report(Outcome(code, now - self.started, transport, timed_out, counted))
        self._last_error = error
        if counted and replayable and not self._cancelled:
            assert self.endpoint is not None
            target = self.endpoint.instance.target
            if transport and self._may_fail_over(now):
                if self._exclude is None:
                    self._exclude = set()
                self._exclude.add(target)
                return 0.0
            delay = retry_delay(
                self.spec.resilience, self.spec.policy, self.request, error, self._tries, now, deadline
            )
            if delay is not None:
                self._tries += 1
                if self._tried is None:
                    self._tried = set()
                self._tried.add(target)
                return delay
        self._end(error, counted=counted)
        raise error

    def _abandoned(self, error: BaseException) -> None:
        """The attempt ended without a status (cancelled, the caller stopped reading): end the call."""
        self._report(Outcome(_CANCELLED, self._clock() - self.started, counted=False))
        self._end(error, counted=False)

    def _end_with(self, error: BaseException) -> None:
        """End the call with an error raised outside an attempt (picking, waiting, cancelled).

        It counts for the service breaker only when it is the last attempt's own failure
        (every endpoint refused): the service answered, badly.
        """
        counted = self._last_error is not None and error is self._last_error
        self._end(error, counted=counted and isinstance(error, grpc.aio.AioRpcError))

    def _may_fail_over(self, now: float) -> bool:
        deadline = self.deadline
        if deadline is not None and deadline.at <= now:
            return False
        return self.wait_for_ready or len(self._exclude or ()) + 1 < self.spec.max_attempts

    # -- the one place outcomes are reported --------------------------------------------------

    def _report(self, outcome: Outcome) -> None:
        """Feed the attempt's outcome to the balancer, the endpoint breaker and the observer."""
        done, breaker, permit = self._done, self._breaker, self._permit
        if done is None or breaker is None or permit is None:
            return  # no attempt in flight: nothing to report
        self._done = self._breaker = self._permit = None
        done(outcome)
        if outcome.counted:
            code = outcome.code  # breakers take names; Enum.name is a Python call, spared on success
            breaker.record(permit, CallOutcome("OK" if code is _OK else code.name, outcome.latency))
        else:
            breaker.release(permit)
        obs = self._obs
        if obs is not None:
            obs.attempt_end(outcome.code)

    def _end(self, error: BaseException | None, *, counted: bool) -> None:
        """Feed the call's outcome to the service breaker and the observer, then finish the call."""
        if self._over:
            return  # a cancel raced the end: the call ends once
        self._over = True
        permit = self._service_permit
        if permit is not None:
            self._service_permit = None
            breaker = self.spec.resilience.breaker
            if counted:
                code = _OK if error is None else code_of(error)
                name = "OK" if code is _OK else code.name
                breaker.record(permit, CallOutcome(name, self._clock() - self.began))
            else:
                breaker.release(permit)
        obs = self._obs
        if obs is not None:
            self._obs = None
            obs.call_end(code_of(error, self._cancelled))
        self._finish(error)


def pushback_of(error: grpc.aio.AioRpcError) -> str | None:
    """The raw ``grpc-retry-pushback-ms`` trailer of a failed attempt, if the server sent one."""
    for key, value in error.trailing_metadata() or ():
        if key == PUSHBACK_METADATA_KEY:
            return value if isinstance(value, str) else value.decode("ascii", "replace")
    return None


def with_attempt(metadata: Any, attempt: int) -> tuple[tuple[str, Any], ...]:
    """``metadata`` plus ``x-mesh-attempt``; sent on retries only, absent means attempt 1."""
    return (*tuple(metadata or ()), (ATTEMPT_METADATA_KEY, str(attempt)))


def retry_delay(
    resilience: Resilience,
    policy: MethodPolicy,
    request: Any,
    error: grpc.aio.AioRpcError,
    tries: int,
    now: float,
    deadline: Deadline | None,
) -> float | None:
    """Seconds to wait before retrying after ``error``, or None; takes from the budget if so.

    ``tries`` counts the attempts the retry policy has seen (transparent failover aside).
    Order matters: the budget is only charged for a retry every other rule allows.
    """
    if not policy.retry_enabled:
        return None
    code = error.code().name
    if not policy.retry.retryable(code) or not policy.may_repeat(request):
        return None
    at = None if deadline is None else deadline.at
    delay = policy.retry.next_delay(tries, code, now, at, pushback_of(error))
    if delay is None:
        return None
    if not resilience.budget.try_withdraw():
        resilience.budget_exhausted += 1
        log.debug(
            "retry budget exhausted",
            extra={"event": "retry_budget_exhausted", "target_service": resilience.service},
        )
        return None
    resilience.retries += 1
    return delay
