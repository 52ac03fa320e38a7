"""What every call of one stub method shares: its policy, observer and per-endpoint callables.

Built once per method when a stub is constructed, so a call pays for none of it.
"""

from __future__ import annotations

from typing import Any

from mesh.channel.pool import Endpoint, EndpointPool
from mesh.channel.resilience import MethodPolicy, Resilience
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
