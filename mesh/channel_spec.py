"""What every call on a MeshChannel shares: the per-method spec, and picking that may wait.

Kept apart from the call objects so each file stays one concern: this one knows endpoints
and deadlines, the call modules know attempts.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import grpc.aio

from mesh.balancer.base import Done
from mesh.channel_pool import Endpoint, EndpointPool, no_endpoint_error
from mesh.channel_resilience import MethodPolicy, Resilience
from mesh.errors import NoHealthyEndpoint
from mesh.observer import MethodObserver


class CallSpec:
    """What a stub method needs per endpoint: cached per-endpoint multicallables and policy."""

    __slots__ = (
        "_cache",
        "deserializer",
        "kind",
        "max_attempts",
        "method",
        "observer",
        "policy",
        "pool",
        "registered",
        "resilience",
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
        resilience: Resilience | None = None,
        observer: MethodObserver | None = None,
    ) -> None:
        self.pool = pool
        self.resilience = resilience or Resilience(pool.name)
        self.policy: MethodPolicy = self.resilience.method(method)
        self.kind = kind
        self.method = method
        self.serializer = serializer
        self.deserializer = deserializer
        self.registered = registered
        self.max_attempts = max_attempts
        self.resolve_timeout = resolve_timeout
        self.observer = observer  # telemetry hooks (mesh.observer); None costs one test per call
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


def remaining_time(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def deadline_error() -> grpc.aio.AioRpcError:
    """DEADLINE_EXCEEDED raised without sending: no time was left for an attempt."""
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
        remaining = remaining_time(deadline)
        if remaining is not None and remaining <= 0:
            raise deadline_error() if wait_for_ready or last_error is None else last_error
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
