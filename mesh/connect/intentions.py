"""May this caller call us? Consul's intentions, asked through the local agent, cached.

A server asks the agent once per calling service and keeps the answer; a blocking query on the
intentions list wakes when any intention changes, and the cache is dropped then, and once more
a moment later: the agent refreshes its own view of intentions from the same signal, so an
answer fetched in between could still be the old one. A changed intention thus acts within
about :data:`SETTLE_SECONDS` (measured in the tests).

When no intention matches, the answer is this process's setting (``MESH_INTENTIONS_DEFAULT``),
not the agent's, whose default depends on whether ACLs happen to be on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mesh.connect.ca import Authorization, ConnectCA, ConnectUnavailable

log = logging.getLogger(__name__)

SETTLE_SECONDS = 1.0
RETRY_SECONDS = 1.0


class IntentionAuthorizer:
    """Answers "may ``client_uri`` call ``target``" from intentions, with a cache kept fresh."""

    def __init__(self, ca: ConnectCA, target: str, *, default_allow: bool, wait: float = 30.0) -> None:
        self.target = target
        self.default_allow = default_allow
        self._ca = ca
        self._wait = wait
        self._cache: dict[str, Authorization] = {}
        self._pending: dict[str, asyncio.Future[Authorization]] = {}
        self._follow: asyncio.Task[None] | None = None
        self._generation = 0  # bumped on every invalidation: an answer from before is not cached

    async def start(self) -> IntentionAuthorizer:
        index = await self._ca.intentions_index()
        self._follow = asyncio.get_running_loop().create_task(self._watch(index), name="connect-intentions")
        return self

    def cached(self, client_uri: str) -> Authorization | None:
        """The cached answer for ``client_uri`` (no await: the per-call fast path)."""
        return self._cache.get(client_uri)

    async def check(self, client_uri: str, client_serial: str) -> Authorization:
        """The answer for ``client_uri``; concurrent first calls share one question to the agent."""
        known = self._cache.get(client_uri)
        if known is not None:
            return known
        pending = self._pending.get(client_uri)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Authorization] = asyncio.get_running_loop().create_future()
        self._pending[client_uri] = future
        generation = self._generation
        try:
            answer = await self._ca.authorize(self.target, client_uri, client_serial)
            if not answer.matched:
                verdict = "allowed" if self.default_allow else "denied"
                answer = Authorization(
                    self.default_allow, f"no intention matches ({verdict} by default)", False
                )
            if generation == self._generation:
                self._cache[client_uri] = answer
            future.set_result(answer)
            return answer
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved here: waiters re-raise it, nobody else needs to
            raise
        finally:
            self._pending.pop(client_uri, None)

    def invalidate(self) -> None:
        self._generation += 1
        self._cache.clear()

    async def _watch(self, index: str) -> None:
        while True:
            try:
                new_index = await self._ca.intentions_index(index=index, wait=self._wait)
            except ConnectUnavailable as error:
                log.warning("following intentions: %s; retrying", error.detail)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if new_index and new_index != index:
                log.info("intentions changed", extra={"event": "intentions_changed", "index": new_index})
                self.invalidate()
                asyncio.get_running_loop().call_later(SETTLE_SECONDS, self.invalidate)
                index = new_index

    async def close(self) -> None:
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
            self._follow = None
