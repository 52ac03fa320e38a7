"""The clients seam with in-memory channels: deadlines, the order service's identity, error mapping.

The channel factory is the seam the discovery issue swaps; here it hands out fake channels
that record what the generated stubs send, so no network is involved.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.type import money_pb2

from mesh.config import UpstreamSettings
from mesh.connect.peer import peer_metadata
from mesh.deadline import Deadline
from mesh.errors import DependencyUnavailable
from services.common.errors import FailedPrecondition
from services.order import domain
from services.order.clients import (
    CallerClients,
    CallerDeadlineExceeded,
    KnownUsers,
    Upstreams,
    step_failure,
)
from services.order.domain import Address, Line, Order, Price
from services.order.participants import FailureKind, StepFailure
from shop.inventory.v1 import inventory_pb2 as inv
from shop.user.v1 import user_pb2

CALLER_TOKEN = (("authorization", "Bearer customer-t0k3n"),)
# What says "the order service" in plaintext mode; under mTLS nothing (the certificate says it).
IDENTITY = peer_metadata("order", insecure=True)


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


class FakeChannel:
    """Answers each method path with a canned reply (or error, or a function giving one) and
    records every call."""

    def __init__(self, name: str, log: list[tuple[str, Any, float, Any]], replies: dict[str, Any]) -> None:
        self.name, self.log, self.replies = name, log, replies

    def unary_unary(self, path: str, **_: Any) -> Callable[..., Any]:
        async def call(request: Any, **options: Any) -> Any:  # the stubs pass timeout= and metadata=
            self.log.append((path.rsplit("/", 1)[1], request, options["timeout"], options["metadata"]))
            reply = self.replies.get(path.rsplit("/", 1)[1])
            if callable(reply):
                reply = reply()
            if isinstance(reply, Exception):
                raise reply
            return reply

        return call

    async def close(self) -> None:
        self.log.append(("close", self.name, 0.0, None))


class FakeContext:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("user-agent", "test"), *CALLER_TOKEN)


def clients(
    remaining: float | None = None, **replies: Any
) -> tuple[CallerClients, list[tuple[str, Any, float, Any]]]:
    log: list[tuple[str, Any, float, Any]] = []
    settings = UpstreamSettings(default_timeout_seconds=5.0)
    upstreams = Upstreams.connect(settings, IDENTITY, lambda name: FakeChannel(name, log, replies))
    return upstreams.for_call(FakeContext(remaining)), log


def an_order() -> Order:
    draft = domain.validate_create([Line("TEA", 2)], Address("Ada", "1 St", "Tokyo", "100", "JP"), "r")
    return domain.new_order("ord_1", "u-1", draft, {"TEA": Price(1250, "EUR")}, "2025-01-01T00:00:00+00:00")


async def test_calls_carry_the_order_services_identity_no_token_and_the_default_timeout() -> None:
    calls, log = clients(None, ReserveStock=inv.ReserveStockResponse())
    await calls.reserve_stock(an_order())
    [(method, request, timeout, metadata)] = log
    assert (method, timeout, metadata) == ("ReserveStock", 5.0, IDENTITY)  # not the caller's token
    assert (request.reservation_id, request.order_id, request.request_id) == (
        "ord_1.reserve",
        "ord_1",
        "ord_1.reserve_stock",
    )
    assert [(i.sku, i.quantity) for i in request.items] == [("TEA", 2)]


async def test_timeouts_never_pass_the_callers_deadline() -> None:
    calls, log = clients(0.8, AuthorizePayment=object())
    await calls.authorize_payment(an_order())
    assert 0 < log[0][2] <= 0.8
    request = log[0][1]
    assert (request.payment_id, request.user_id, request.amount.units, request.amount.currency_code) == (
        "ord_1.pay",
        "u-1",
        25,
        "EUR",
    )


async def test_no_time_left_means_no_call() -> None:
    calls, log = clients(0.0)
    with pytest.raises(StepFailure) as failure:
        await calls.capture_payment(an_order())
    assert failure.value.kind is FailureKind.UNAVAILABLE and log == []


@pytest.mark.parametrize("lookup", ["check_user", "catalog"])
async def test_the_callers_own_deadline_is_deadline_exceeded_not_an_outage(lookup: str) -> None:
    """UNAVAILABLE would count against the caller's breakers, and tell the client a dependency is down."""
    calls, log = clients(0.0)
    with pytest.raises(CallerDeadlineExceeded) as raised:
        await (calls.check_user("u-1") if lookup == "check_user" else calls.catalog(["TEA"]))
    assert raised.value.code is grpc.StatusCode.DEADLINE_EXCEEDED and log == []
    for code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
        held: list[CallerClients] = []

        def late(code: grpc.StatusCode = code, held: list[CallerClients] = held) -> grpc.aio.AioRpcError:
            held[0].deadline = Deadline.after(-0.01)  # it passed while the upstream was being asked
            return rpc_error(code, "no answer within the caller's time")

        calls, log = clients(None, GetUser=late, GetProduct=late)
        calls.deadline = Deadline.after(5.0)
        held.append(calls)
        with pytest.raises(CallerDeadlineExceeded):
            await (calls.check_user("u-1") if lookup == "check_user" else calls.catalog(["TEA"]))
        assert len(log) == 1, code  # the call was made: the deadline ran out during it


async def test_an_unavailable_upstream_with_time_left_is_an_outage() -> None:
    calls, _ = clients(None, GetUser=rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    calls.deadline = Deadline.after(5.0)
    with pytest.raises(DependencyUnavailable):
        await calls.check_user("u-1")


async def test_an_upstream_too_slow_for_the_default_timeout_is_an_outage() -> None:
    late = rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    calls, _ = clients(None, GetUser=late)
    with pytest.raises(DependencyUnavailable):
        await calls.check_user("u-1")


@pytest.mark.parametrize(
    ("code", "kind", "reason"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, FailureKind.BUSINESS, "payment declined: too much"),
        (grpc.StatusCode.NOT_FOUND, FailureKind.BUSINESS, "payment service refused the request (NOT_FOUND)"),
        (grpc.StatusCode.UNAVAILABLE, FailureKind.UNAVAILABLE, "payment service is unavailable"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, FailureKind.UNCERTAIN, "payment service did not answer in time"),
        (grpc.StatusCode.INTERNAL, FailureKind.UNCERTAIN, "payment service failed (INTERNAL)"),
    ],
)
def test_upstream_errors_map_to_failure_kinds(code: grpc.StatusCode, kind: FailureKind, reason: str) -> None:
    details = "payment declined: too much" if code is grpc.StatusCode.FAILED_PRECONDITION else "boom"
    failure = step_failure("payment service", rpc_error(code, details))
    assert failure.kind is kind and failure.reason.startswith(reason)


async def test_a_declined_step_raises_its_reason() -> None:
    calls, _ = clients(
        None, AuthorizePayment=rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "payment declined")
    )
    with pytest.raises(StepFailure) as failure:
        await calls.authorize_payment(an_order())
    assert (failure.value.kind, failure.value.reason) == (FailureKind.BUSINESS, "payment declined")


async def test_compensations_report_what_they_undid() -> None:
    held = inv.ReleaseStockResponse(reservation=inv.Reservation(reservation_id="ord_1.reserve"))
    calls, log = clients(None, ReleaseStock=held)
    assert await calls.release_stock(an_order()) == "stock returned to the shelf"
    assert (log[0][1].reservation_id, log[0][1].request_id) == ("ord_1.reserve", "ord_1.release_stock")
    calls, _ = clients(None, ReleaseStock=inv.ReleaseStockResponse())
    assert await calls.release_stock(an_order()) == "no stock was held"


async def test_lookups_map_errors_before_anything_is_stored() -> None:
    missing, _ = clients(None, GetUser=rpc_error(grpc.StatusCode.NOT_FOUND, "gone"))
    with pytest.raises(FailedPrecondition) as gone:
        await missing.check_user("u-1")
    assert gone.value.reason == "USER_NOT_FOUND"
    down, _ = clients(None, GetUser=rpc_error(grpc.StatusCode.UNAVAILABLE, "refused"))
    with pytest.raises(DependencyUnavailable) as unavailable:
        await down.check_user("u-1")
    assert unavailable.value.name == "user service"
    found, log = clients(None, GetUser=user_pb2.GetUserResponse())
    await found.check_user("u-1")
    assert log[0][1].user_id == "u-1" and log[0][3] == IDENTITY


async def test_a_confirmed_account_is_not_asked_about_again_an_unknown_one_always_is() -> None:
    replies: dict[str, Any] = {"GetUser": user_pb2.GetUserResponse()}
    log: list[tuple[str, Any, float, Any]] = []
    settings = UpstreamSettings(default_timeout_seconds=5.0)
    upstreams = Upstreams.connect(settings, IDENTITY, lambda name: FakeChannel(name, log, replies))
    await upstreams.for_call(FakeContext(None)).check_user("u-1")
    # Accounts are never removed: a later order by u-1, from any call, skips the lookup,
    # even with the user service down.
    replies["GetUser"] = rpc_error(grpc.StatusCode.UNAVAILABLE, "refused")
    await upstreams.for_call(FakeContext(None)).check_user("u-1")
    await upstreams.for_service().check_user("u-1")
    assert [entry[1].user_id for entry in log] == ["u-1"]
    # Only confirmations are remembered: a missing account, or one the service could not
    # be asked about, is asked about every time.
    replies["GetUser"] = rpc_error(grpc.StatusCode.NOT_FOUND, "gone")
    for _ in range(2):
        with pytest.raises(FailedPrecondition):
            await upstreams.for_call(FakeContext(None)).check_user("u-2")
    replies["GetUser"] = rpc_error(grpc.StatusCode.UNAVAILABLE, "refused")
    with pytest.raises(DependencyUnavailable):
        await upstreams.for_call(FakeContext(None)).check_user("u-3")
    assert [entry[1].user_id for entry in log] == ["u-1", "u-2", "u-2", "u-3"]


def test_known_users_forget_the_longest_known_past_their_limit() -> None:
    known = KnownUsers(limit=2)
    for user_id in ("a", "b", "a", "c"):
        known.add(user_id)
    assert ("a" in known, "b" in known, "c" in known, len(known)) == (False, True, True, 2)


async def test_the_catalog_prices_known_skus_and_leaves_unknown_ones_out() -> None:
    product = inv.GetProductResponse(
        product=inv.Product(
            sku="TEA", price=money_pb2.Money(currency_code="EUR", units=12, nanos=500_000_000)
        )
    )
    calls, log = clients(None, GetProduct=product)
    assert await calls.catalog(["TEA", "TEA"]) == {"TEA": Price(1250, "EUR")}
    assert len(log) == 1  # asked once per distinct sku
    calls, _ = clients(None, GetProduct=rpc_error(grpc.StatusCode.NOT_FOUND))
    assert await calls.catalog(["GONE"]) == {}
    calls, _ = clients(None, GetProduct=rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED))
    with pytest.raises(DependencyUnavailable) as down:
        await calls.catalog(["TEA"])
    assert down.value.name == "inventory service"


async def test_closing_closes_every_channel() -> None:
    log: list[tuple[str, Any, float, Any]] = []
    upstreams = Upstreams.connect(UpstreamSettings(), IDENTITY, lambda name: FakeChannel(name, log, {}))
    await upstreams.close()
    assert sorted(entry[1] for entry in log) == ["inventory", "payment", "shipping", "user"]


async def test_the_saga_calls_as_the_order_service_with_no_deadline_and_nothing_under_mtls() -> None:
    log: list[tuple[str, Any, float, Any]] = []
    replies = {"CapturePayment": object()}
    for identity in (IDENTITY, peer_metadata("order", insecure=False)):
        upstreams = Upstreams.connect(
            UpstreamSettings(default_timeout_seconds=5.0),
            identity,
            lambda name: FakeChannel(name, log, replies),
        )
        saga = upstreams.for_service()
        assert saga.deadline is None
        await saga.capture_payment(an_order())
        assert log[-1][2:] == (5.0, identity)
    assert log[-1][3] == ()  # mTLS: the certificate says who calls; no header, no token
