"""Hooks the MeshChannel's own call objects call, so telemetry needs no grpc.aio interceptor.

Why not interceptors: any grpc.aio client interceptor wraps each call in a task of its own
(about +9 % client CPU per call each at concurrency 64), and an interceptor on the
per-endpoint channels cannot see the logical call, only its attempts. The MeshChannel
already drives every attempt itself, so it reports them here, inline:

    observer.for_channel(channel)             once per channel   -> ChannelObserver | None
    channel_observer.for_method(path, type)   once per stub method -> MethodObserver | None
    method_observer.call_start(metadata)      once per call      -> CallObservation | None
    observation.attempt_start(n, target, md)  per attempt: returns the metadata to send
    observation.attempt_end(code)             per attempt (ignored when no attempt is open)
    observation.call_end(code)                once, when the call (stream included) ends

Returning ``None`` at any level means "nothing to observe" and costs the call one ``is None``
test: a channel without observers, or a tracing observer asked about health checks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import grpc

Metadata = Any
"""What a grpc.aio call accepts as metadata: None, a sequence of pairs or grpc.aio.Metadata."""


class CallObservation(Protocol):
    """One logical call being observed (its state lives here, not in the observer)."""

    def attempt_start(self, attempt: int, target: str, metadata: Metadata) -> Metadata:
        """An attempt is about to go to ``target`` (``host:port``); return the metadata to send."""
        ...

    def attempt_end(self, code: grpc.StatusCode) -> None:
        """The open attempt ended with ``code``; a no-op when no attempt is open."""
        ...

    def call_end(self, code: grpc.StatusCode) -> None:
        """The call ended (for streams: the stream ended) with ``code``."""
        ...


class MethodObserver(Protocol):
    """Observes one method of one channel (built once per stub method)."""

    def call_start(self, metadata: Metadata) -> CallObservation | None:
        """A call starts, in the caller's context (a current span is its parent; without one,
        a ``traceparent`` in the call's ``metadata`` is, as the gateway sends)."""
        ...


class ChannelObserver(Protocol):
    """Observes one MeshChannel."""

    def for_method(self, path: str, call_type: str) -> MethodObserver | None:
        """The observer of ``/pkg.Service/Method`` (``call_type``: unary, server_stream…)."""
        ...


class CallObserver(Protocol):
    """What ``mesh_channel(..., observers=[...])`` takes: telemetry for a process's channels."""

    def for_channel(self, channel: Any) -> ChannelObserver | None:
        """Called once when a MeshChannel is built; ``None`` to observe none of its calls."""
        ...


class _BothCalls:
    __slots__ = ("_a", "_b")

    def __init__(self, a: CallObservation, b: CallObservation) -> None:
        self._a = a
        self._b = b

    def attempt_start(self, attempt: int, target: str, metadata: Metadata) -> Metadata:
        return self._b.attempt_start(attempt, target, self._a.attempt_start(attempt, target, metadata))

    def attempt_end(self, code: grpc.StatusCode) -> None:
        self._a.attempt_end(code)
        self._b.attempt_end(code)

    def call_end(self, code: grpc.StatusCode) -> None:
        self._a.call_end(code)
        self._b.call_end(code)


class _BothMethods:
    __slots__ = ("_a", "_b")

    def __init__(self, a: MethodObserver, b: MethodObserver) -> None:
        self._a = a
        self._b = b

    def call_start(self, metadata: Metadata) -> CallObservation | None:
        a = self._a.call_start(metadata)
        b = self._b.call_start(metadata)
        if a is None or b is None:
            return a or b
        return _BothCalls(a, b)


def combine(observers: Sequence[MethodObserver | None]) -> MethodObserver | None:
    """One method observer calling all of ``observers`` in order (``None`` when there are none)."""
    present = [o for o in observers if o is not None]
    if not present:
        return None
    combined = present[0]
    for other in present[1:]:
        combined = _BothMethods(combined, other)
    return combined


class ChannelObservers:
    """The channel observers of one MeshChannel; resolves a method's observers once."""

    __slots__ = ("_observers",)

    def __init__(self, channel: Any, observers: Sequence[CallObserver]) -> None:
        found = (observer.for_channel(channel) for observer in observers)
        self._observers = tuple(o for o in found if o is not None)

    def for_method(self, path: str, call_type: str) -> MethodObserver | None:
        return combine([o.for_method(path, call_type) for o in self._observers])


def code_of(error: BaseException | None, cancelled: bool = False) -> grpc.StatusCode:
    """The status code a call ending with ``error`` reports (as ``call.code()`` would)."""
    if error is None:
        return grpc.StatusCode.OK
    code = getattr(error, "code", None)
    if callable(code):
        value = code()
        if isinstance(value, grpc.StatusCode):
            return value
    if cancelled or isinstance(error, (asyncio.CancelledError, GeneratorExit)):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN
