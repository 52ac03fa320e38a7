"""Choosing the endpoint for one attempt: the balancer's pick among what the filters leave.

Filters, strictest first, relaxed one at a time until a pick succeeds:

* excluded: refused this call at the transport; never again for this call;
* breaker-blocked: its endpoint breaker would refuse the attempt now;
* already tried: failed this call with a retryable status; others first, itself if alone;
* failing: its connection is known to be down (streaming-request calls only: they cannot
  fail over, so they pay for the connectivity check; unary calls fail over instead).

When the filters leave nothing because every endpoint's breaker is open, the call fails
fast with ``circuit open``. When nothing is there at all, the call waits for the registry's
first answer (up to ``resolve_timeout``), or for endpoints when made with
``wait_for_ready``, never past its deadline; otherwise it fails with ``no healthy endpoint``
(or with the error of its last attempt, when it had one). A call whose deadline comes before
the registry's answer fails with DEADLINE_EXCEEDED: the caller chose too short a time, and
UNAVAILABLE would count as an outage against everyone (a gateway's breaker, say).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from mesh.balancer.base import Done
from mesh.channel.errors import circuit_open_error, deadline_error, no_endpoint_error
from mesh.channel.pool import Endpoint
from mesh.channel.spec import CallSpec
from mesh.deadline import Deadline
from mesh.errors import NoHealthyEndpoint

_WAIT_FOR_READY_PAUSE = 0.1  # seconds between rounds over endpoints that all failed once


async def select(
    spec: CallSpec,
    exclude: set[str],
    tried: set[str],
    deadline: Deadline | None,
    wait_for_ready: bool,
    last_error: BaseException | None,
    *,
    avoid_failing: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Endpoint, Done]:
    """Pick for one attempt through the filters above; may wait (see the module docstring)."""
    pool = spec.pool
    resilience = spec.resilience
    blocked = resilience.blocked()
    avoid = exclude | blocked if blocked else set(exclude)
    preferences = []
    if avoid_failing:
        preferences.append(avoid | tried | pool.failing_targets())
    if tried:
        preferences.append(avoid | tried)
    preferences.append(avoid)
    for candidates in preferences:
        try:
            return pool.pick(candidates)
        except NoHealthyEndpoint:
            pass
    endpoints = pool.endpoints
    if blocked and endpoints and all(e.target in blocked for e in endpoints):
        resilience.fail_fast += 1
        raise circuit_open_error(pool.name)
    return await _wait_for_pick(spec, avoid, deadline, wait_for_ready, last_error, clock)


async def _wait_for_pick(
    spec: CallSpec,
    avoid: set[str],
    deadline: Deadline | None,
    wait_for_ready: bool,
    last_error: BaseException | None,
    clock: Callable[[], float],
) -> tuple[Endpoint, Done]:
    pool = spec.pool
    while True:
        try:
            return pool.pick(avoid)
        except NoHealthyEndpoint:
            pass
        remaining = None if deadline is None else deadline.remaining(clock())
        if remaining is not None and remaining <= 0:
            raise deadline_error() if wait_for_ready or last_error is None else last_error
        if not pool.resolved:
            registry_bound = not wait_for_ready and (remaining is None or spec.resolve_timeout < remaining)
            within = _smaller(spec.resolve_timeout, remaining) if registry_bound else remaining
            if not await pool.wait_changed(0, within) and registry_bound:
                raise no_endpoint_error(pool.name)
            # Otherwise the deadline bounded the wait: go round, so a timer that fired early
            # (uvloop's clock is the loop's, in milliseconds) waits out the rest, and a call
            # whose own deadline came first ends with DEADLINE_EXCEEDED, never an outage.
            continue
        if not wait_for_ready:
            raise last_error if avoid and last_error else no_endpoint_error(pool.name)
        if avoid and pool.endpoints:
            # Every endpoint failed this call once: pause, then give each another chance.
            await asyncio.sleep(_smaller(_WAIT_FOR_READY_PAUSE, remaining))
            avoid.clear()
            continue
        await pool.wait_changed(pool.version, remaining)


def _smaller(a: float, b: float | None) -> float:
    return a if b is None else min(a, b)
