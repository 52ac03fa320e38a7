"""Login throttling: a failure budget per source, a backoff per account, a fair share of hashing.

Without it, one client could try 45 passwords a second through the gateway (38 directly over
gRPC), and while it did, everyone else's login waited behind its scrypt derivations (two
hashing threads shared by all). The rules, all enforced here in the user service so a
direct gRPC call is held to them as much as a REST one:

* **per source** (the client's address: the gRPC peer, or the address the gateway forwards
  with its signed proof, see services/common/auth.py): a token bucket of failed logins,
  ``source_burst`` at once and ``source_per_second`` after that. Successful logins cost
  nothing, so an office behind one NAT can log in freely; guessing from it cannot.
* **per account** (the normalized email, whether or not such an account exists, so the
  answer tells nothing about existence): after ``account_free_failures`` wrong passwords in
  a row, each further one locks the account for ``backoff * 2**k`` seconds, capped at
  ``account_backoff_max_seconds``, from any source. A success resets it. While locked even
  the right password is refused (otherwise the lock would not slow guessing at all); the
  cap bounds what an attacker can do to the owner.
* **hashing**: a source has at most ``hash_share`` derivations in the pool at once and at
  most ``hash_queue`` more waiting for its turn; beyond that it is refused before any work.
  The pool's queue is first come first served, so another source's login waits behind a
  few derivations, not behind the whole flood.

A refusal is RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo`` (when to come back) and an
``ErrorInfo`` (reason ``LOGIN_THROTTLED``, metadata ``scope``: source, account or hashing);
the gateway answers it as 429 with ``Retry-After``.

State is in memory, per instance: with two user instances each enforces its own limits
(so a client spreading guesses over both gets up to twice the budget). Every table is
bounded (``max_tracked`` entries, least recently touched evicted first) and entries that no
longer restrict anything are dropped when touched.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from mesh.errors import ConfigError
from services.common.errors import DomainError

ERROR_DOMAIN = "user.tsunagu"
REASON = "LOGIN_THROTTLED"
QUEUE_FULL_RETRY_SECONDS = 1.0  # about ten derivations: when a waiting place is likely free


@dataclass(frozen=True)
class LoginLimits:
    """The throttle's numbers (``USER_LOGIN_*``, read in services/user/settings.py)."""

    source_burst: int = 20
    source_per_second: float = 0.2
    account_free_failures: int = 5
    account_backoff_seconds: float = 1.0
    account_backoff_max_seconds: float = 300.0
    hash_share: int = 1
    hash_queue: int = 8
    max_tracked: int = 100_000

    def __post_init__(self) -> None:
        for name in ("source_burst", "account_free_failures", "hash_share", "max_tracked"):
            if getattr(self, name) < 1:
                raise ConfigError(f"USER_LOGIN_{name.upper()} must be >= 1")
        if self.hash_queue < 0:
            raise ConfigError("USER_LOGIN_HASH_QUEUE must be >= 0")
        for name in ("source_per_second", "account_backoff_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"USER_LOGIN_{name.upper()} must be > 0")
        if self.account_backoff_max_seconds < self.account_backoff_seconds:
            raise ConfigError(
                "USER_LOGIN_ACCOUNT_BACKOFF_MAX_SECONDS must be >= USER_LOGIN_ACCOUNT_BACKOFF_SECONDS"
            )


class LoginThrottled(DomainError):
    """RESOURCE_EXHAUSTED: come back after ``retry_after`` seconds."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, scope: str, retry_after: float) -> None:
        super().__init__("too many login attempts; try again later")
        self.scope = scope
        self.retry_after = max(retry_after, 0.001)

    def details(self) -> list[Any]:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(math.ceil(self.retry_after * 1e9))
        return [
            error_details_pb2.RetryInfo(retry_delay=delay),
            error_details_pb2.ErrorInfo(reason=REASON, domain=ERROR_DOMAIN, metadata={"scope": self.scope}),
        ]


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass(slots=True)
class _Account:
    failures: int = 0
    locked_until: float = 0.0
    last_failure: float = 0.0


@dataclass(slots=True)
class _Turn:
    semaphore: asyncio.Semaphore
    users: int = 0  # holding or waiting


class LoginThrottle:
    """The rules of the module docstring; one per user service process."""

    def __init__(
        self, limits: LoginLimits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limits = limits or LoginLimits()
        self._clock = clock
        self._sources: OrderedDict[str, _Bucket] = OrderedDict()
        self._accounts: OrderedDict[str, _Account] = OrderedDict()
        self._turns: dict[str, _Turn] = {}

    def admit(self, source: str, account: str) -> None:
        """LoginThrottled when this source's budget or this account's backoff says wait."""
        now = self._clock()
        bucket = self._bucket(source, now)
        if bucket is not None and bucket.tokens < 1.0:
            raise LoginThrottled("source", (1.0 - bucket.tokens) / self.limits.source_per_second)
        state = self._account(account, now)
        if state is not None and now < state.locked_until:
            raise LoginThrottled("account", state.locked_until - now)

    def failed(self, source: str, account: str) -> None:
        """A wrong password: one token off the source, one failure on the account."""
        now = self._clock()
        limits = self.limits
        bucket = self._bucket(source, now)
        if bucket is None:
            bucket = _Bucket(float(limits.source_burst), now)
            _remember(self._sources, source, bucket, limits.max_tracked)
        bucket.tokens -= 1.0
        state = self._account(account, now)
        if state is None:
            state = _Account()
            _remember(self._accounts, account, state, limits.max_tracked)
        state.failures += 1
        state.last_failure = now
        over = state.failures - limits.account_free_failures
        if over >= 0:
            backoff = limits.account_backoff_seconds * 2.0 ** min(over, 62)
            state.locked_until = now + min(backoff, limits.account_backoff_max_seconds)

    def succeeded(self, account: str) -> None:
        """The right password: the account's failures are forgotten."""
        self._accounts.pop(account, None)

    @asynccontextmanager
    async def hashing_turn(self, source: str) -> AsyncIterator[None]:
        """Wait for one of this source's ``hash_share`` places; refused past ``hash_queue``."""
        turn = self._turns.get(source)
        if turn is None:
            turn = self._turns[source] = _Turn(asyncio.Semaphore(self.limits.hash_share))
        if turn.users >= self.limits.hash_share + self.limits.hash_queue:
            raise LoginThrottled("hashing", QUEUE_FULL_RETRY_SECONDS)
        turn.users += 1
        try:
            async with turn.semaphore:
                yield
        finally:
            turn.users -= 1
            if turn.users == 0:
                del self._turns[source]

    def tracked(self) -> tuple[int, int]:
        """(sources, accounts) currently remembered."""
        return len(self._sources), len(self._accounts)

    def _bucket(self, source: str, now: float) -> _Bucket | None:
        """The source's bucket refilled to ``now``; None (and forgotten) once it is full."""
        bucket = self._sources.get(source)
        if bucket is None:
            return None
        limits = self.limits
        bucket.tokens = min(
            float(limits.source_burst), bucket.tokens + (now - bucket.updated) * limits.source_per_second
        )
        bucket.updated = now
        if bucket.tokens >= limits.source_burst:
            del self._sources[source]
            return None
        self._sources.move_to_end(source)
        return bucket

    def _account(self, account: str, now: float) -> _Account | None:
        """The account's state; None (and forgotten) once its failures are old news."""
        state = self._accounts.get(account)
        if state is None:
            return None
        if (
            now - state.last_failure > 2 * self.limits.account_backoff_max_seconds
            and now >= state.locked_until
        ):
            del self._accounts[account]
            return None
        self._accounts.move_to_end(account)
        return state


def _remember(table: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
    table[key] = value
    while len(table) > limit:
        table.popitem(last=False)  # the least recently touched
