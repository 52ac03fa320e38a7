"""The shared endpoint feed: versions, broadcast wake-ups, and watchers that each see every change."""

from __future__ import annotations

import asyncio

from mesh.registry.base import ServiceInstance
from mesh.registry.feed import EndpointFeed, FeedWatcher

A = ServiceInstance("a", "svc", "10.0.0.2", 50051)
B = ServiceInstance("b", "svc", "10.0.0.1", 50051)


async def settle() -> None:
    """Let every runnable task run until it blocks again (no wall-clock wait)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_publish_orders_by_target_and_counts_only_changes() -> None:
    feed = EndpointFeed("svc")
    assert not feed.resolved and feed.endpoints == ()
    assert feed.publish([A, B])
    assert feed.endpoints == (B, A) and feed.version == 1 and feed.resolved
    assert not feed.publish([B, A])  # the same set in another order is no change
    assert feed.version == 1
    assert feed.publish([])
    assert feed.endpoints == () and feed.version == 2


async def test_a_first_empty_answer_resolves_the_feed() -> None:
    feed = EndpointFeed("svc")
    assert feed.publish(())
    assert feed.resolved and feed.version == 1


async def test_next_waits_for_the_first_answer_then_for_each_change() -> None:
    feed = EndpointFeed("svc")
    watcher = FeedWatcher(feed)
    pending = asyncio.create_task(watcher.next())
    await settle()
    assert not pending.done()
    feed.publish([A])
    assert await pending == (A,)
    again = asyncio.create_task(watcher.next())
    await settle()
    assert not again.done()  # already seen: blocks until the set changes
    feed.publish([A])
    await settle()
    assert not again.done()  # republishing the same set wakes nobody
    feed.publish([A, B])
    assert await again == (B, A)


async def test_one_publish_wakes_every_watcher_and_a_late_one_sees_the_current_set() -> None:
    feed = EndpointFeed("svc")
    watchers = [FeedWatcher(feed) for _ in range(3)]
    waiting = [asyncio.create_task(w.next()) for w in watchers]
    await settle()
    feed.publish([B])
    assert await asyncio.gather(*waiting) == [(B,), (B,), (B,)]
    assert await FeedWatcher(feed).next() == (B,)  # newer than nothing: returns at once


async def test_a_watcher_that_missed_several_versions_gets_the_latest_once() -> None:
    feed = EndpointFeed("svc")
    watcher = FeedWatcher(feed)
    feed.publish([A])
    feed.publish([A, B])
    assert await watcher.next() == (B, A)
    pending = asyncio.create_task(watcher.next())
    await settle()
    assert not pending.done()
    pending.cancel()


def test_close_runs_the_callback_once() -> None:
    closed: list[FeedWatcher] = []
    watcher = FeedWatcher(EndpointFeed("svc"), on_close=closed.append)
    watcher.close()
    watcher.close()
    assert closed == [watcher]
    FeedWatcher(EndpointFeed("svc")).close()  # no callback: nothing to call
