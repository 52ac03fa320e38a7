"""Runs sagas in the background, one runner per order at a time, and resumes them on start.

Why a background task and not the CreateOrder call itself: a saga must finish whether or not
its caller is still waiting (a short deadline, a dropped connection, a restart). CreateOrder
therefore starts the saga here and waits for its terminal state up to the caller's deadline;
past that it answers PENDING and WatchOrder follows the rest.

Mutual exclusion across instances is a lease on the order row (``lease_owner``,
``lease_expires``) rather than the version check alone: the version check only refuses the
*second save*, so two instances could still both call a participant for one order at once;
the lease keeps the second instance from starting at all, and every save is conditional on
the lease (fencing), with the version check still underneath. A lease is renewed every third
of its life while its saga runs and released when it ends (by the save that ends it, or on
its own when a drive stops short); a crashed holder's lease expires, and the periodic scan
(every lease period) picks the order up again.

An attempt that leaves the saga open (a compensation that failed, the database away) is
retried after a delay from the mesh's one backoff (:class:`mesh.resilience.Backoff`: full
jitter, so sagas stuck on one outage do not retry in step), unbounded while the process lives:
each attempt is bounded by the per-call timeout, and every retry is logged.

A forward step whose participant cannot be reached (UNAVAILABLE: no endpoint yet at start-up,
a refused connection, an open breaker) is such an attempt, not a failure of the order: the
step may have run before a crash, so it is re-sent until it answers, and only after
``unavailable_wait_seconds`` of waiting is the order cancelled, that step undone with the
rest as possibly done (:mod:`services.order.saga.waiting`). A CancelOrder queued meanwhile
runs once that drive ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from mesh.config import env_float
from mesh.deadline import detached
from mesh.errors import ConfigError
from mesh.resilience import Backoff
from services.common.values import utc_now
from services.order import domain
from services.order.domain import Order
from services.order.participants import Participants
from services.order.saga.definition import SagaStep
from services.order.saga.metrics import SagaMetrics
from services.order.saga.orchestrator import Checkpoint, Orchestrator
from services.order.saga.waiting import ParticipantNotReady, WaitingParticipants
from services.order.store import OrderStore, StaleOrder

log = logging.getLogger(__name__)

ParticipantsFactory = Callable[[], Participants]


@dataclass(frozen=True)
class SagaSettings:
    """Lease length (also the resume-scan period), the retry backoff's base and cap, and how
    long a forward step waits for an unreachable participant before the order is cancelled."""

    lease_seconds: float = 10.0
    retry_base_seconds: float = 0.2
    retry_max_seconds: float = 30.0
    unavailable_wait_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in ("lease_seconds", "retry_base_seconds", "retry_max_seconds", "unavailable_wait_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"ORDER_SAGA_{name.upper()} must be > 0, got {getattr(self, name)}")
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ConfigError(
                f"ORDER_SAGA_RETRY_MAX_SECONDS must be >= ORDER_SAGA_RETRY_BASE_SECONDS "
                f"({self.retry_base_seconds}), got {self.retry_max_seconds}"
            )

    @property
    def retry_backoff(self) -> Backoff:
        """Doubling from the base up to the cap, each delay drawn in [0, ceiling]."""
        return Backoff(initial=self.retry_base_seconds, multiplier=2.0, maximum=self.retry_max_seconds)


def saga_settings_from_env(environ: Mapping[str, str]) -> SagaSettings:
    """``ORDER_SAGA_LEASE_SECONDS``, ``ORDER_SAGA_RETRY_BASE_SECONDS``, ``…_RETRY_MAX_SECONDS``;
    unset ones keep their default, a bad one is a ConfigError naming it."""
    default = SagaSettings()
    return SagaSettings(
        lease_seconds=env_float(environ, "ORDER_SAGA_LEASE_SECONDS", default.lease_seconds),
        retry_base_seconds=env_float(environ, "ORDER_SAGA_RETRY_BASE_SECONDS", default.retry_base_seconds),
        retry_max_seconds=env_float(environ, "ORDER_SAGA_RETRY_MAX_SECONDS", default.retry_max_seconds),
        unavailable_wait_seconds=env_float(
            environ, "ORDER_SAGA_UNAVAILABLE_WAIT_SECONDS", default.unavailable_wait_seconds
        ),
    )


class SagaRunner:
    """Owns this process's saga tasks, their leases, the lease heartbeat and the resume scan."""

    def __init__(
        self,
        store: OrderStore,
        steps: Sequence[SagaStep],
        on_saved: Callable[[Order], None],
        settings: SagaSettings | None = None,
        clock: Callable[[], str] = utc_now,
        checkpoint: Checkpoint | None = None,
        wall: Callable[[], float] = time.time,
        *,
        backoff: Backoff | None = None,
        metrics: SagaMetrics | None = None,
    ) -> None:
        """``backoff`` paces the retries of an unfinished saga (default: the settings' one);
        ``metrics`` (the process's ``shop_saga_*``) hears what the sagas here do."""
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.settings = settings or SagaSettings()
        self._store = store
        self._on_saved = on_saved
        self._wall = wall
        self._backoff = backoff or self.settings.retry_backoff
        self._metrics = metrics or SagaMetrics()  # unregistered: counts for no one
        self._saga = Orchestrator(steps, self._save, clock, checkpoint, self._metrics.compensated)
        self._tasks: dict[str, asyncio.Task[Order | None]] = {}
        self._held: set[str] = set()
        self._loops: list[asyncio.Task[None]] = []

    def new_lease(self) -> tuple[str, float]:
        """The lease (owner, expiry) an order is created with when this runner drives it next:
        :meth:`submit` with ``claimed`` then starts without a claim transaction."""
        return self.owner, self._wall() + self.settings.lease_seconds

    def submit(
        self,
        order_id: str,
        participants: ParticipantsFactory,
        cancel_reason: str = "",
        *,
        claimed: Order | None = None,
    ) -> asyncio.Task[Order | None]:
        """Drive the order (or start undoing it) in the background; the task ends with the
        terminal order, or None when another instance holds it or took it over.

        ``claimed``: the order as stored with this runner's lease (:meth:`new_lease`) in the
        transaction that created it; the first attempt starts from it instead of claiming.
        A drive already running here is joined; a cancellation queues behind it.
        """
        current = self._tasks.get(order_id)
        if current is not None and not current.done() and not cancel_reason:
            return current
        # A task copies the handler's context: without detached() the saga would inherit the
        # CreateOrder caller's deadline and be cut off exactly when the caller stops waiting.
        with detached():
            task = asyncio.create_task(
                self._drive(order_id, participants, cancel_reason, current, claimed), name=f"saga {order_id}"
            )
        self._tasks[order_id] = task

        def forget(done: asyncio.Task[Order | None]) -> None:
            if self._tasks.get(order_id) is done:
                del self._tasks[order_id]

        task.add_done_callback(forget)
        return task

    def start(self, participants: ParticipantsFactory) -> None:
        """Begin the lease heartbeat and the resume scan (the first scan runs at once)."""
        self._loops = [
            asyncio.create_task(self._heartbeat(), name="saga lease heartbeat"),
            asyncio.create_task(self._resume_forever(participants), name="saga resume scan"),
        ]

    async def close(self) -> None:
        """Stop every loop and saga task, then give the leases back so others need not wait."""
        tasks = [*self._loops, *self._tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._store.release(self.owner)

    async def resume_once(self, participants: ParticipantsFactory) -> list[str]:
        """Start every open saga that nobody holds; the order ids started."""
        started = []
        for lease in await self._store.unfinished(now=self._wall()):
            order_id = lease.order.order_id
            if order_id not in self._tasks:
                log.info("resuming saga", extra={"order_id": order_id, "previous_owner": lease.owner})
                self.submit(order_id, participants)
                started.append(order_id)
        return started

    async def _save(self, order: Order) -> Order:
        saved = await self._store.save(order, self.owner)
        if not domain.saga_open(saved):
            self._held.discard(saved.order_id)  # the save that ended the saga gave the lease back
        self._metrics.saw(saved)
        self._on_saved(saved)
        return saved

    async def _drive(
        self,
        order_id: str,
        participants: ParticipantsFactory,
        cancel_reason: str,
        previous: asyncio.Task[Order | None] | None,
        created: Order | None = None,
    ) -> Order | None:
        if previous is not None and not previous.done():
            await asyncio.wait({previous})
        attempt = 0
        waiting_since: float | None = None  # monotonic time this drive first found a participant down
        try:
            while True:
                try:
                    claimed: Order | None
                    if created is not None:  # stored with our lease: the first attempt needs no claim
                        claimed, created = created, None
                    else:
                        claimed = await self._store.claim(
                            order_id, self.owner, self._wall(), self.settings.lease_seconds
                        )
                    if claimed is not None:
                        self._held.add(order_id)
                        self._metrics.driving(order_id)
                        order = claimed
                        self._metrics.saw(order)
                        if cancel_reason:
                            order = await self._saga.cancel(order, participants(), cancel_reason)
                        else:
                            give_up = (
                                waiting_since is not None
                                and time.monotonic() - waiting_since >= self.settings.unavailable_wait_seconds
                            )
                            waiting = WaitingParticipants(participants(), give_up)
                            order = await self._saga.run(order, waiting)
                        if not domain.saga_open(order):
                            return order
                        why = order.status_reason
                    else:
                        if not cancel_reason:
                            return None  # another live instance drives it; the scan watches for its death
                        order = await self._store.get(order_id)
                        if order.status is domain.OrderStatus.CANCELLED:
                            return order
                        why = "another instance holds the order; the cancellation waits for it"
                except StaleOrder:
                    log.warning(
                        "saga lease lost; another instance has the order", extra={"order_id": order_id}
                    )
                    return None
                except ParticipantNotReady as down:  # not a failure of the order: wait for it
                    if waiting_since is None:
                        waiting_since = time.monotonic()
                    why = f"waiting for {down.failure.service}: {down.failure.reason}"
                except Exception as error:  # the database or a bug: the saga must still end
                    log.warning("saga attempt failed", exc_info=True, extra={"order_id": order_id})
                    why = f"{type(error).__name__}: {error}"
                self._metrics.retrying(order_id)
                delay = self._backoff.delay(attempt)  # attempt: the retries before this one
                attempt += 1
                log.warning(
                    "saga not finished; retrying",
                    extra={
                        "order_id": order_id,
                        "attempt": attempt,
                        "delay_s": round(delay, 3),
                        "reason": why,
                    },
                )
                await asyncio.sleep(delay)
        finally:
            self._metrics.done(order_id)
            if order_id in self._held:
                self._held.discard(order_id)
                with contextlib.suppress(Exception):
                    await self._store.release(self.owner, order_id)

    async def _heartbeat(self) -> None:
        """Renew the leases of running sagas every third of a lease."""
        while True:
            await asyncio.sleep(self.settings.lease_seconds / 3)
            held = sorted(self._held)
            try:
                kept = await self._store.renew(self.owner, held, self._wall(), self.settings.lease_seconds)
            except Exception:
                log.warning("saga lease renewal failed", exc_info=True)
                continue
            if kept < len(held):
                log.warning("saga leases lost", extra={"held": len(held), "kept": kept})

    async def _resume_forever(self, participants: ParticipantsFactory) -> None:
        """Resume open sagas now, then every lease period (a crashed holder's lease expires)."""
        while True:
            try:
                await self.resume_once(participants)
            except Exception:
                log.warning("saga resume scan failed", exc_info=True)
            await asyncio.sleep(self.settings.lease_seconds)
