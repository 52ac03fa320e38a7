"""Two-stage exit: the first SIGTERM/SIGINT drains through ``stop()``, the second exits at once."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from mesh.server import signals


class FakeLoop:
    """Records signal handlers and runs tasks on the real loop."""

    def __init__(self) -> None:
        self.handlers: dict[int, tuple[Callable[..., None], tuple[Any, ...]]] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def add_signal_handler(self, signum: int, callback: Callable[..., None], *args: Any) -> None:
        self.handlers[signum] = (callback, args)

    def create_task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.append(task)
        return task

    def deliver(self, signum: int) -> None:
        callback, args = self.handlers[signum]
        callback(*args)


class Exited(Exception):
    pass


async def test_first_signal_runs_stop_once_and_second_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        raise Exited

    monkeypatch.setattr(signals.os, "_exit", fake_exit)
    stops: list[str] = []

    async def stop() -> None:
        stops.append("stop")

    loop = FakeLoop()
    signals.install_stop_signals(loop, stop)  # type: ignore[arg-type]
    assert set(loop.handlers) == {signal.SIGTERM, signal.SIGINT}
    loop.deliver(signal.SIGTERM)
    assert len(loop.tasks) == 1
    await loop.tasks[0]
    assert stops == ["stop"] and codes == []
    with pytest.raises(Exited):
        loop.deliver(signal.SIGINT)
    assert codes == [signals.EXIT_ON_SECOND_SIGNAL] == [130]
    assert stops == ["stop"] and len(loop.tasks) == 1  # the drain is not started again


async def test_a_second_signal_during_a_hanging_drain_still_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    codes: list[int] = []
    monkeypatch.setattr(signals.os, "_exit", codes.append)
    never = asyncio.Event()

    async def stop() -> None:
        await never.wait()

    loop = FakeLoop()
    signals.install_stop_signals(loop, stop)  # type: ignore[arg-type]
    loop.deliver(signal.SIGINT)
    loop.deliver(signal.SIGINT)
    assert codes == [130]
    assert not loop.tasks[0].done()
    loop.tasks[0].cancel()
