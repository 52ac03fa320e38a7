"""May this caller call us? Consul's intentions, asked through the local agent, cached.

A server asks the agent once per calling service and keeps the answer; a blocking query on the
intentions list wakes when any intention changes, and the cache is dropped then, and once more
a moment later: the agent refreshes its own view of intentions from the same signal, so an
answer fetched in between could still be the old one. A changed intention thus acts within
about :data:`SETTLE_SECONDS` (measured in the tests).

When no intention matches, the answer is this process's setting (``MESH_INTENTIONS_DEFAULT``),
not the agent's, whose default depends on whether ACLs happen to be on.

Callers the intentions name are asked about before they call: at start, and again once a
change has settled, the authorizer asks the agent about every source an intention names for
this service (``peer_uri`` builds their identities), so a first call from any of them finds
its answer cached, even while Consul cannot answer.

An answer dropped by an invalidation is kept aside as the *last known* one. If the agent then
cannot answer (a Consul cluster electing a new leader answers 500 for a few seconds, and an
election also wakes the intentions watch with a new index), that last answer stands, allow or
deny, and the agent is asked again on the next call: the same trade as Consul's own
``acl.down_policy = "extend-cache"``. A change of intention made while Consul cannot answer
acts once it can. Only a caller never answered before fails (UNAVAILABLE, naming Consul).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from mesh.connect.ca import Authorization, ConnectCA, ConnectUnavailable

log = logging.getLogger(__name__)

SETTLE_SECONDS = 1.0
RETRY_SECONDS = 1.0


class IntentionAuthorizer:
    """Answers "may ``client_uri`` call ``target``" from intentions, with a cache kept fresh."""

    def __init__(
        self,
        ca: ConnectCA,
        target: str,
        *,
        default_allow: bool,
        wait: float = 30.0,
        peer_uri: Callable[[str], str] | None = None,
    ) -> None:
        self.target = target
        self._peer_uri = peer_uri  # service name -> its SPIFFE ID here; None: ask only when called
        self.default_allow = default_allow
        self._ca = ca
        self._wait = wait
        self._cache: dict[str, Authorization] = {}
        self._last_known: dict[str, Authorization] = {}  # answers an invalidation dropped
        self._standing = False  # whether last known answers are in use now (logged once per outage)
        self._pending: dict[str, asyncio.Future[Authorization]] = {}
        self._follow: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._generation = 0  # bumped on every invalidation: an answer from before is not cached

    async def start(self) -> IntentionAuthorizer:
        index = await self._ca.intentions_index()
        self._follow = asyncio.get_running_loop().create_task(self._watch(index), name="connect-intentions")
        await self.warm()
        return self

    async def warm(self) -> None:
        """Ask about every source an intention names for this service, so its first call is cached."""
        if self._peer_uri is None:
            return
        try:
            sources = await self._ca.intention_sources(self.target)
            for source in sources:
                await self.check(self._peer_uri(source), "")
        except ConnectUnavailable as error:  # the calls themselves will ask (or find the last answer)
            log.warning("could not ask about the intentions' callers ahead: %s", error.detail)

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
            try:
                answer = await self._ca.authorize(self.target, client_uri, client_serial)
            except ConnectUnavailable as error:
                last = self._last_known.get(client_uri)
                if last is None:
                    raise
                if not self._standing:
                    log.warning("intentions unanswerable; the last known answers stand: %s", error.detail)
                    self._standing = True
                future.set_result(last)
                return last
            if self._standing:
                log.info("intentions answered again")
                self._standing = False
            self._last_known.pop(client_uri, None)
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
        self._last_known.update(self._cache)
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
                if self._refresh is not None:
                    self._refresh.cancel()
                self._refresh = asyncio.get_running_loop().create_task(self._settled(), name="connect-rewarm")
                index = new_index

    async def _settled(self) -> None:
        """Once the agent's own view has caught up: drop what was fetched meanwhile, ask again."""
        await asyncio.sleep(SETTLE_SECONDS)
        self.invalidate()
        await self.warm()

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh
            self._refresh = None
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
            self._follow = None
