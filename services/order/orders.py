"""The order use cases: place, read, list, watch and cancel, over the store and the orchestrator.

Ownership is enforced here, where the data lives: a customer sees only their own orders and
another user's order is NOT_FOUND (not PERMISSION_DENIED, which would confirm it exists);
admins see every order.

CreateOrder stores the order, starts its saga in the background (:mod:`services.order.saga.runner`)
and waits for the terminal state (CONFIRMED or CANCELLED) up to the caller's deadline; when
the deadline comes first it returns the order as it stands, PENDING, and the saga carries on
regardless: it does not belong to the call, and after a crash it is resumed on start. Clients
follow a PENDING order with WatchOrder (or re-send CreateOrder with the same request_id, which
returns the same order). WatchOrder follows an order until it is terminal: saves made by this
process wake watchers at once, and a short poll catches changes made by other instances.
CancelOrder likewise waits up to the deadline for the order to be CANCELLED.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field

from mesh.identity import Principal
from services.common.errors import NotFound
from services.common.idempotency import RequestKey
from services.common.values import new_id, utc_now
from services.order import domain
from services.order.domain import Draft, Order, OrderStatus
from services.order.participants import Lookups, Participants
from services.order.saga.definition import ORDER_STEPS, SagaStep
from services.order.saga.metrics import SagaMetrics
from services.order.saga.orchestrator import Checkpoint
from services.order.saga.runner import ParticipantsFactory, SagaRunner, SagaSettings
from services.order.store import OrderStore


@dataclass
class _Watchers:
    """How many watchers follow one order here, and the event the next save here sets."""

    count: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Orders:
    """One per process: it owns the saga runner and the watchers' wakeups."""

    def __init__(
        self,
        store: OrderStore,
        steps: Sequence[SagaStep] = ORDER_STEPS,
        clock: Callable[[], str] = utc_now,
        ids: Callable[[], str] = lambda: new_id("ord"),
        watch_poll_seconds: float = 1.0,
        saga: SagaSettings | None = None,
        checkpoint: Checkpoint | None = None,
        metrics: SagaMetrics | None = None,
    ) -> None:
        """``metrics``: the process's saga metrics (``shop_saga_*``), fed by the saga runner."""
        self._store = store
        self._runner = SagaRunner(store, steps, self._notify, saga, clock, checkpoint, metrics=metrics)
        # Only orders someone watches here: an entry goes with its last watcher (see _versions).
        self._changed: dict[str, _Watchers] = {}
        self._watch_poll = watch_poll_seconds
        self._clock = clock
        self._ids = ids

    def start_resuming(self, participants: ParticipantsFactory) -> None:
        """Resume every open saga now and keep taking over those whose holder died."""
        self._runner.start(participants)

    async def close(self) -> None:
        await self._runner.close()

    async def create(
        self,
        user_id: str,
        draft: Draft,
        lookups: Lookups,
        participants: Participants,
        wait_seconds: float | None = None,
    ) -> Order:
        """Place an order once per (user, request_id) and wait up to ``wait_seconds`` (None:
        until it is terminal) for its saga, which runs on without the caller.

        The user and the prices are checked before anything is stored, so when either service
        is down the call fails UNAVAILABLE with no trace (the user service only for an account
        this process has not seen confirmed before: accounts are never removed); after the
        order is stored, failures end in a CANCELLED order.
        """
        existing = await self._store.find(user_id, draft.request_id)
        created = False
        if existing is None:
            await lookups.check_user(user_id)
            catalog = await lookups.catalog(line.sku for line in draft.lines)
            order = domain.new_order(self._ids(), user_id, draft, catalog, self._clock())
            existing, created = await self._store.create(order, self._runner.new_lease())
        domain.check_replay(existing, draft)
        if existing.status is not OrderStatus.PENDING:
            return existing
        task = self._runner.submit(
            existing.order_id, lambda: participants, claimed=existing if created else None
        )
        return await self._settle(task, existing.order_id, wait_seconds)

    async def get(self, principal: Principal, order_id: str) -> Order:
        order = await self._store.get(order_id)
        if order.user_id != principal.subject and not principal.is_admin:
            raise NotFound(f"order '{order_id}' not found")
        return order

    async def list(self, user_id: str, after: tuple[str, str] | None, limit: int) -> list[Order]:
        return await self._store.list_for_user(user_id, after, limit)

    async def watch(self, principal: Principal, order_id: str) -> AsyncGenerator[Order, None]:
        """The order now, then each new version of it, ending once it is CONFIRMED or CANCELLED."""
        order = await self.get(principal, order_id)
        yield order
        if order.status is OrderStatus.PENDING:
            async with contextlib.aclosing(self._versions(order)) as versions:
                async for later in versions:
                    yield later
                    if later.status is not OrderStatus.PENDING:
                        return

    async def _versions(self, order: Order) -> AsyncGenerator[Order, None]:
        """Every later version of the order, as saves here (or a poll) reveal them; endless.

        Its wakeup is registered for as long as this generator is open (close it: ``aclosing``)
        and dropped with the last watcher, whichever instance saved the order.
        """
        order_id = order.order_id
        watchers = self._changed.setdefault(order_id, _Watchers())
        watchers.count += 1
        try:
            while True:
                changed = watchers.changed  # taken before reading: a save in between still wakes us
                latest = await self._store.get(order_id)
                if latest.version != order.version:
                    order = latest
                    yield order
                    continue
                with contextlib.suppress(TimeoutError):  # a timeout: another instance may have saved it
                    await asyncio.wait_for(changed.wait(), self._watch_poll)
        finally:
            watchers.count -= 1
            if not watchers.count:
                del self._changed[order_id]

    async def cancel(
        self,
        principal: Principal,
        order_id: str,
        participants: Participants,
        wait_seconds: float | None = None,
        key: RequestKey | None = None,
    ) -> Order:
        """Undo the order's completed steps (after a run in progress here); wait up to
        ``wait_seconds`` for CANCELLED. A CANCELLED order comes back unchanged. ``key`` (the
        request_id) is remembered for this order once the caller may see it."""
        order = await self.get(principal, order_id)
        await self._store.claim_key(key)
        if order.status is OrderStatus.CANCELLED:
            return order
        task = self._runner.submit(order_id, lambda: participants, domain.CANCELLED_BY_CUSTOMER)
        return await self._settle(task, order_id, wait_seconds)

    def _notify(self, order: Order) -> None:
        """Wake this order's watchers; the entry stays, with a fresh event, while they watch."""
        watchers = self._changed.get(order.order_id)
        if watchers is not None:
            watchers.changed.set()
            watchers.changed = asyncio.Event()

    async def _settle(self, task: asyncio.Task[Order | None], order_id: str, wait: float | None) -> Order:
        """The saga's result, or the order as it stands once ``wait`` seconds have passed.

        The task is shielded: the caller going away never stops the saga. When another
        instance drives the order (the task ends with None), its saves are followed instead.
        """
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                result = await asyncio.shield(task)
                if result is not None:
                    return result
                order = await self._store.get(order_id)
                if not domain.saga_open(order):
                    return order
                async with contextlib.aclosing(self._versions(order)) as versions:
                    async for later in versions:
                        if not domain.saga_open(later):
                            return later
        return await self._store.get(order_id)
