"""The order use cases: place, read, list, watch and cancel, over the store and the orchestrator.

Ownership is enforced here, where the data lives: a customer sees only their own orders and
another user's order is NOT_FOUND (not PERMISSION_DENIED, which would confirm it exists);
admins see every order.

CreateOrder waits for the order's terminal state; it returns PENDING only when the caller's
deadline cut the run short or a compensation could not finish. WatchOrder follows an order
until it is terminal: saves made by this process wake watchers at once, and a short poll
catches changes made by other instances.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

from mesh.identity import Principal
from services.common.errors import NotFound
from services.common.values import new_id, utc_now
from services.order import domain
from services.order.domain import ORDER_STEPS, Draft, Order, OrderStatus, SagaStep
from services.order.participants import Lookups, Participants
from services.order.store import OrderStore, StaleOrder
from services.order.workflow import KeyedLocks, Orchestrator


class Orders:
    """One per process: it owns the per-order locks and the watchers' wakeups."""

    def __init__(
        self,
        store: OrderStore,
        steps: Sequence[SagaStep] = ORDER_STEPS,
        clock: Callable[[], str] = utc_now,
        ids: Callable[[], str] = lambda: new_id("ord"),
        watch_poll_seconds: float = 1.0,
    ) -> None:
        self._store = store
        self._saga = Orchestrator(steps, self._save, clock)
        self._changed: dict[str, asyncio.Event] = {}
        self._watch_poll = watch_poll_seconds
        self._clock = clock
        self._ids = ids
        self._locks = KeyedLocks()

    async def create(self, user_id: str, draft: Draft, lookups: Lookups, participants: Participants) -> Order:
        """Place an order once per (user, request_id) and run it to a terminal state.

        The user and the prices are checked before anything is stored, so when either service
        is down the call fails UNAVAILABLE with no trace; after the order is stored, failures
        end in a CANCELLED order (or PENDING, when even undoing could not finish).
        """
        existing = await self._store.find(user_id, draft.request_id)
        if existing is not None:
            return await self._drive(existing, participants)
        await lookups.check_user(user_id)
        catalog = await lookups.catalog(line.sku for line in draft.lines)
        order = domain.new_order(self._ids(), user_id, draft, catalog, self._clock())
        stored, _created = await self._store.create(order)
        return await self._drive(stored, participants)

    async def get(self, principal: Principal, order_id: str) -> Order:
        order = await self._store.get(order_id)
        if order.user_id != principal.subject and not principal.is_admin:
            raise NotFound(f"order '{order_id}' not found")
        return order

    async def list(self, user_id: str, after: tuple[str, str] | None, limit: int) -> list[Order]:
        return await self._store.list_for_user(user_id, after, limit)

    async def watch(self, principal: Principal, order_id: str) -> AsyncIterator[Order]:
        """The order now, then each new version of it, ending once it is CONFIRMED or CANCELLED."""
        order = await self.get(principal, order_id)
        yield order
        while order.status is OrderStatus.PENDING:
            changed = self._changed.setdefault(order_id, asyncio.Event())  # before reading: no lost wakeup
            latest = await self._store.get(order_id)
            if latest.version != order.version:
                order = latest
                yield order
                continue
            with contextlib.suppress(TimeoutError):  # a timeout: another instance may have saved it
                await asyncio.wait_for(changed.wait(), self._watch_poll)

    async def cancel(self, principal: Principal, order_id: str, participants: Participants) -> Order:
        """Undo the order's completed steps; a CANCELLED order comes back unchanged."""
        order = await self.get(principal, order_id)
        if order.status is OrderStatus.CANCELLED:
            return order
        async with self._locks.hold(order_id):
            order = await self._store.get(order_id)  # what a run we waited for left behind
            try:
                return await self._saga.cancel(order, participants, domain.CANCELLED_BY_CUSTOMER)
            except StaleOrder:
                return await self._store.get(order_id)

    async def _save(self, order: Order) -> Order:
        saved = await self._store.save(order)
        changed = self._changed.pop(order.order_id, None)
        if changed is not None:
            changed.set()
        return saved

    async def _drive(self, order: Order, participants: Participants) -> Order:
        """Run (or resume) a PENDING order; terminal orders are returned as they are."""
        if order.status is not OrderStatus.PENDING:
            return order
        async with self._locks.hold(order.order_id):
            order = await self._store.get(order.order_id)
            try:
                return await self._saga.run(order, participants)
            except StaleOrder:
                # Another instance is driving this order: report where it is now.
                return await self._store.get(order.order_id)
