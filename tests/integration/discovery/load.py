"""A steady, bounded call load for discovery tests: who answered, and what failed.

Calls are launched at a fixed rate (not back to back) so a slow or dead endpoint cannot
lower the offered load, and the number in flight is capped so a stall cannot pile up an
unbounded number of tasks. Every call has a deadline; every failure is kept with its time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc.aio


@dataclass
class LoadResult:
    started: float = field(default_factory=time.monotonic)
    ok: int = 0
    by_label: Counter[bytes] = field(default_factory=Counter)
    first_seen: dict[bytes, float] = field(default_factory=dict)
    last_seen: dict[bytes, float] = field(default_factory=dict)
    failures: list[tuple[float, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)

    def record(self, label: bytes) -> None:
        now = time.monotonic()
        self.ok += 1
        self.by_label[label] += 1
        self.first_seen.setdefault(label, now)
        self.last_seen[label] = now


class Load:
    """``async with Load(call, rate=150) as result:`` runs ``call()`` ``rate`` times a second."""

    def __init__(
        self,
        call: Callable[[], Awaitable[bytes]],
        *,
        rate: float = 150.0,
        max_in_flight: int = 64,
        max_seconds: float = 120.0,
    ) -> None:
        self.call = call
        self.rate = rate
        self.max_in_flight = max_in_flight
        self.max_seconds = max_seconds
        self.result = LoadResult()
        self._runner: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def _one(self) -> None:
        try:
            response = await self.call()
        except grpc.aio.AioRpcError as error:
            self.result.failures.append((time.monotonic(), f"{error.code().name}: {error.details()}"))
            return
        self.result.record(response.split(b"|", 1)[0])

    async def _run(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        deadline = next_at + self.max_seconds
        while time.monotonic() < deadline:
            if len(self._in_flight) < self.max_in_flight:
                task = asyncio.ensure_future(self._one())
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def __aenter__(self) -> LoadResult:
        self._runner = asyncio.ensure_future(self._run())
        return self.result

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        self._runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._runner
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=10)
