"""The deadline of the request being handled, so outgoing calls inherit it without plumbing.

Why a contextvar: a handler that calls three services should not have to thread its
caller's deadline through every helper to every stub. The server interceptor
(:mod:`mesh.server.deadline`) stores the incoming deadline as an absolute monotonic time for
the duration of the handler; each asyncio task gets a copy of the context, so concurrent
requests never see each other's deadlines and tasks the handler spawns inherit it. Every
mesh-channel call made meanwhile takes the smaller of its own timeout and the time left.

    deadline = call_deadline(timeout, default_timeout)   # absolute monotonic, or None
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

_INCOMING: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "mesh_incoming_deadline", default=None
)


def incoming_deadline() -> float | None:
    """The absolute (``time.monotonic``) deadline of the request being handled, if any."""
    return _INCOMING.get()


def remaining() -> float | None:
    """Seconds left of the incoming request's deadline (may be <= 0), or None without one."""
    deadline = _INCOMING.get()
    return None if deadline is None else deadline - time.monotonic()


@contextmanager
def deadline_scope(deadline: float | None) -> Iterator[None]:
    """Make ``deadline`` (absolute monotonic) the incoming deadline inside the block.

    A scope never extends an enclosing deadline: the tighter of the two wins.
    """
    outer = _INCOMING.get()
    if outer is not None and (deadline is None or outer < deadline):
        deadline = outer
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


def call_deadline(timeout: float | None, default_timeout: float | None = None) -> float | None:
    """The absolute deadline of an outgoing call.

    ``timeout`` is the caller's own (``default_timeout``, from the policy file, when the
    caller gives none); the result is never later than the incoming request's deadline.
    """
    if timeout is None:
        timeout = default_timeout
    now = time.monotonic()
    own = None if timeout is None else now + timeout
    inherited = _INCOMING.get()
    if inherited is None:
        return own
    return inherited if own is None or inherited < own else own
