"""Learn the status of a streaming client call once it finishes, without blocking the stream.

A grpc.aio call exposes its status only through a coroutine (``await call.code()``), while
``add_done_callback`` callbacks are plain functions: the callback starts a small task (kept
referenced until it ends, so it cannot be garbage-collected half-way). Unary-response calls
do not need this: their interceptor simply awaits ``call.code()`` before returning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc

OnCode = Callable[[grpc.StatusCode], None]


class StatusWatch:
    """Runs ``on_code(code)`` when a call is done; one instance per interceptor."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: set[asyncio.Task[None]] = set()

    def watch(self, call: Any, on_code: OnCode) -> None:
        call.add_done_callback(lambda done: self._later(done, on_code))

    def _later(self, call: Any, on_code: OnCode) -> None:
        async def record() -> None:
            on_code(await call.code())

        task = asyncio.get_running_loop().create_task(record())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
