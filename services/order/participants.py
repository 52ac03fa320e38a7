"""The port the order saga calls through, and how a call can fail.

Kept apart from the rules so the clients (real gRPC stubs) and the tests' in-memory fakes
implement one small protocol, and the saga sees only three kinds of failure, whatever the
transport: a refusal, a participant that never got the call, or an outcome nobody knows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Protocol

from services.order.domain import Order, Price


class FailureKind(StrEnum):
    BUSINESS = "business"  # the participant refused and did nothing (stock, decline, refusal)
    UNAVAILABLE = "unavailable"  # the call never ran (the participant is down or unreachable)
    UNCERTAIN = "uncertain"  # the call may have run (a timeout, an internal error)


class StepFailure(Exception):
    """A participant call that did not succeed; ``reason`` becomes the order's status_reason."""

    def __init__(self, kind: FailureKind, service: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.service = service
        self.reason = reason


class Participants(Protocol):
    """The calls a saga makes; each is idempotent by the order's step keys and returns a detail."""

    async def reserve_stock(self, order: Order) -> str: ...
    async def release_stock(self, order: Order) -> str: ...
    async def commit_stock(self, order: Order) -> str: ...
    async def authorize_payment(self, order: Order) -> str: ...
    async def capture_payment(self, order: Order) -> str: ...
    async def void_payment(self, order: Order) -> str: ...
    async def refund_payment(self, order: Order) -> str: ...
    async def schedule_shipment(self, order: Order) -> str: ...
    async def cancel_shipment(self, order: Order) -> str: ...


class Lookups(Protocol):
    """What CreateOrder asks before anything is stored; a failure here stores nothing.

    Raise DependencyUnavailable naming the service when it cannot be asked.
    """

    async def check_user(self, user_id: str) -> None:
        """FAILED_PRECONDITION when the account does not exist."""
        ...

    async def catalog(self, skus: Iterable[str]) -> Mapping[str, Price]:
        """Prices of the skus the catalog has; unknown skus are simply absent."""
        ...
