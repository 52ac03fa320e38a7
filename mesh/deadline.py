"""Deadlines as values, and the deadline of the request being handled.

Why a value object: a raw ``float`` deadline is ambiguous (seconds left? an absolute time? on
which clock?), and the bugs that ambiguity breeds are silent. :class:`Deadline` is an instant
on ``time.monotonic``'s clock, so it survives wall-clock jumps, and it answers the questions
calls ask of it (time left, expired, the tighter of two) in one place.

Why a contextvar: a handler that calls three services should not have to thread its
caller's deadline through every helper to every stub. The server interceptor
(:mod:`mesh.server.deadline`) publishes the incoming deadline for the duration of the
handler; each asyncio task gets a copy of the context, so concurrent requests never see
each other's deadlines and tasks the handler spawns inherit it. Every mesh-channel call
made meanwhile takes the earlier of its own timeout and the inherited deadline.

    deadline = call_deadline(timeout, default_timeout)   # Deadline, or None without one
    deadline.remaining()                                   # seconds left, may be <= 0
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

monotonic = time.monotonic


class Deadline:
    """An instant on the monotonic clock by which a call must be over.

    Immutable by convention (``__slots__``, no setters): one is made per call on the hot path,
    where a frozen dataclass's ``object.__setattr__`` would cost more than the call's picker.
    """

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at  # seconds on time.monotonic's clock

    @classmethod
    def after(cls, seconds: float, now: float | None = None) -> Deadline:
        """The deadline ``seconds`` from ``now`` (the monotonic clock's now by default)."""
        return cls((monotonic() if now is None else now) + seconds)

    def remaining(self, now: float | None = None) -> float:
        """Seconds left (zero or negative once it has passed)."""
        return self.at - (monotonic() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        """Whether the deadline has passed: no time is left to send anything."""
        return self.at <= (monotonic() if now is None else now)

    def earlier(self, other: Deadline | None) -> Deadline:
        """The tighter of this deadline and ``other`` (``None`` means no deadline)."""
        return self if other is None or self.at <= other.at else other

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Deadline) and other.at == self.at

    def __hash__(self) -> int:
        return hash(self.at)

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f}s)"


_INCOMING: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "mesh_incoming_deadline", default=None
)


def remaining() -> float | None:
    """Seconds left of the incoming request's deadline (may be <= 0), or None without one."""
    deadline = _INCOMING.get()
    return None if deadline is None else deadline.remaining()


@contextmanager
def deadline_scope(deadline: Deadline | None) -> Iterator[None]:
    """Make ``deadline`` the incoming deadline inside the block.

    A scope never extends an enclosing deadline: the tighter of the two wins.
    """
    outer = _INCOMING.get()
    if outer is not None:
        deadline = outer.earlier(deadline)
    token = _INCOMING.set(deadline)
    try:
        yield
    finally:
        _INCOMING.reset(token)


@contextmanager
def detached() -> Iterator[None]:
    """Drop the incoming deadline inside the block, for work that must outlive the request.

    A task created inside a handler copies the handler's context, deadline included: a
    background job (a saga that must finish whether or not its caller still waits) starts
    its task inside ``with detached():`` so its calls get their own timeouts instead.
    """
    token = _INCOMING.set(None)
    try:
        yield
    finally:
        _INCOMING.reset(token)


def call_deadline(timeout: float | None, default_timeout: float | None = None) -> Deadline | None:
    """The deadline of an outgoing call.

    ``timeout`` is the caller's own (``default_timeout``, from the policy file, when the
    caller gives none); the result is never later than the incoming request's deadline.
    """
    if timeout is None:
        timeout = default_timeout
    inherited = _INCOMING.get()
    if timeout is None:
        return inherited
    at = monotonic() + timeout  # compared inline, not by earlier(): this runs on every call
    if inherited is not None and inherited.at <= at:
        return inherited
    return Deadline(at)
