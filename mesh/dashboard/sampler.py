"""The sampler loop: one :class:`~mesh.observe.model.MeshView` per interval, shared by every page.

Why one loop and not one per browser: each sample asks Consul and scrapes every instance's
``/metrics``; ten open tabs must not mean ten times that. Every HTTP handler reads
:attr:`Sampler.latest` and waits on :meth:`Sampler.wait_newer`.

A sample that fails or hangs never stops the loop nor the server: the last view is kept, and
its ``consul_error`` says why it is old, which is what the page shows (the collector itself
reports an unreachable Consul or instance inside the view it returns; this is for anything
it lets escape).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import Protocol

from mesh.observe.model import MeshView

log = logging.getLogger(__name__)


class ViewSource(Protocol):
    """What the sampler samples: :class:`mesh.observe.collector.MeshObserver`, or a test's fake."""

    async def sample(self) -> MeshView: ...

    async def close(self) -> None: ...


class Sampler:
    """Calls ``source.sample()`` every ``interval`` seconds; ``version`` grows per sample."""

    def __init__(self, source: ViewSource, interval: float = 1.0, timeout: float = 5.0) -> None:
        self.source = source
        self.interval = interval
        self.timeout = timeout
        self.latest = MeshView(at=0.0, window_seconds=0.0, consul_error="no sample yet")
        self.version = 0
        self.failures = 0
        self._published = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="dashboard-sampler")

    async def stop(self) -> None:
        """End the loop, then close the source.

        Cancelled again until it is done: Python 3.11's ``asyncio.wait_for`` (which the
        collector's Consul client uses) can swallow a cancellation that arrives as its inner
        call finishes, and the loop would then run on; ``_stopping`` ends it at the next turn.
        """
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.2)
            if not task.cancelled() and task.exception() is not None:
                log.warning("the sampler loop ended with an error", exc_info=task.exception())
        await self.source.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            await self.sample_once()
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    async def sample_once(self) -> MeshView:
        try:
            async with asyncio.timeout(self.timeout):
                view = await self.source.sample()
        except TimeoutError:
            view = self._failed(f"no sample within {self.timeout:g}s")
        except Exception as error:  # whatever the collector let escape: shown, never fatal
            view = self._failed(f"sampling failed: {type(error).__name__}: {error}")
        self.publish(view)
        return view

    def _failed(self, reason: str) -> MeshView:
        self.failures += 1
        log.warning("no mesh sample", extra={"reason": reason})
        return dataclasses.replace(self.latest, consul_error=reason)

    def publish(self, view: MeshView) -> None:
        """Make ``view`` the latest and wake every waiter (one event per version: no lock to hold)."""
        self.latest = view
        self.version += 1
        published, self._published = self._published, asyncio.Event()
        published.set()

    def wake(self) -> None:
        """Wake every waiter now, with no new sample (the server is shutting down)."""
        published, self._published = self._published, asyncio.Event()
        published.set()

    async def wait_newer(self, version: int, within: float) -> int:
        """Wait until a sample newer than ``version`` is published (at most ``within`` s); the version now."""
        if self.version <= version:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._published.wait()
        return self.version
