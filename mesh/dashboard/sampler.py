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
from typing import Protocol, runtime_checkable

from mesh.observe.model import MeshView

log = logging.getLogger(__name__)


class ViewSource(Protocol):
    """What the sampler samples: :class:`mesh.observe.collector.MeshObserver`, or a test's fake."""

    async def sample(self) -> MeshView: ...

    async def close(self) -> None: ...


@runtime_checkable
class HealthFeed(Protocol):
    """Tells when Consul's health changed (:meth:`mesh.observe.collector.MeshObserver.health_changed`)."""

    async def health_changed(self, index: str, wait: float) -> str: ...


FEED_WAIT_SECONDS = 30.0  # one blocking query's longest wait
FEED_RETRY_SECONDS = 1.0  # after a failed one (Consul away: the samples say so)
FEED_MIN_GAP_SECONDS = 0.1  # between two queries: flapping checks, or a proxy that drops
# the blocking arguments and answers at once, must not spin the feed against Consul


class Sampler:
    """Calls ``source.sample()`` every ``interval`` seconds; ``version`` grows per sample.

    With a ``feed`` it also samples as soon as Consul's health changes: a blocking query on
    the health index wakes the loop, so a verdict (an instance turning critical) reaches the
    page within one sample of Consul giving it, not up to a whole interval later.
    """

    def __init__(
        self, source: ViewSource, interval: float = 1.0, timeout: float = 5.0, feed: HealthFeed | None = None
    ) -> None:
        self.source = source
        self.interval = interval
        self.timeout = timeout
        self.feed = feed
        self._due = asyncio.Event()  # set: sample now, not at the end of the interval
        self._follower: asyncio.Task[None] | None = None
        self.latest = MeshView(at=0.0, window_seconds=0.0, consul_error="no sample yet")
        self.version = 0
        self.failures = 0
        self._published = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self.run(), name="dashboard-sampler")
        if self.feed is not None:
            self._follower = loop.create_task(self._follow(self.feed), name="dashboard-health-feed")

    async def stop(self) -> None:
        """End the loop, then close the source.

        Cancelled again until it is done: Python 3.11's ``asyncio.wait_for`` (which the
        collector's Consul client uses) can swallow a cancellation that arrives as its inner
        call finishes, and the loop would then run on; ``_stopping`` ends it at the next turn.
        """
        self._stopping = True
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            await asyncio.wait({follower})
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
            self._due.clear()  # a change seen from here on is sampled next, at once
            await self.sample_once()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self.interval - (loop.time() - started))):
                    await self._due.wait()

    async def _follow(self, feed: HealthFeed) -> None:
        """Wake the loop each time Consul's health index moves."""
        index = ""
        loop = asyncio.get_running_loop()
        while not self._stopping:
            asked = loop.time()
            try:
                moved = await feed.health_changed(index, FEED_WAIT_SECONDS)
            except Exception as error:  # Consul away or refusing: the samples report it
                log.debug("health feed failed", extra={"error": repr(error)})
                index = ""
                await asyncio.sleep(FEED_RETRY_SECONDS)
                continue
            if index and moved != index:
                self._due.set()
            # An index that went backwards (Consul restarted) starts over, as Consul advises.
            index = moved if not index or _index_value(moved) >= _index_value(index) else ""
            await asyncio.sleep(max(0.0, asked + FEED_MIN_GAP_SECONDS - loop.time()))

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


def _index_value(index: str) -> int:
    return int(index) if index.isdigit() else 0
