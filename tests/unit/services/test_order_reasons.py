"""An order's status_reason and step details are stable words, never a transport's text.

A participant that was down left orders CANCELLED with reasons such as ``payment service
is unavailable: failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50052
...`` or ``no healthy endpoint for 'payment'``: a peer address and grpc-core's words shown
to the customer. The saga now says ``payment service is unavailable`` (documented in
docs/limits.md, "Order status reasons") and logs the detail with the order and request id.
"""

from __future__ import annotations

import logging

import grpc
import grpc.aio
import pytest

from services.order.clients import step_failure
from services.order.domain import OrderStatus
from services.order.participants import FailureKind, StepFailure
from tests.unit.services.test_order_saga_orchestrator import FakeParticipants, MemoryStore, new_order, saga

CONNECT = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50052: "
    "Failed to connect to remote host: Connection refused"
)
INTERNAL_TEXT = (
    "127.0.0.1",
    "ipv4",
    "failed to connect",
    "Stream removed",
    "Socket closed",
    "healthy endpoint",
    "codec",
    "UNKNOWN",
)


def _rpc_failure(service: str, code: grpc.StatusCode, details: str) -> StepFailure:
    """The StepFailure the real clients make from a failed call (raised as they raise it)."""
    error = grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
    try:
        try:
            raise error
        except grpc.aio.AioRpcError as caught:
            raise step_failure(service, caught) from None
    except StepFailure as failure:
        return failure


def _texts(order: object) -> list[str]:
    return [order.status_reason, *(s.detail for s in order.steps)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "details",
    [CONNECT, "no healthy endpoint for 'payment'", "circuit open for 'payment'"],
)
async def test_an_order_cancelled_because_payment_is_down_says_so_in_stable_words(
    details: str, caplog: pytest.LogCaptureFixture
) -> None:
    failure = _rpc_failure("payment service", grpc.StatusCode.UNAVAILABLE, details)
    caplog.set_level(logging.INFO)
    order = await saga(MemoryStore()).run(new_order(), FakeParticipants(authorize_payment=failure))
    assert order.status is OrderStatus.CANCELLED
    assert order.status_reason == "payment service is unavailable"
    leaked = [t for t in _texts(order) if any(i in t for i in INTERNAL_TEXT)]
    assert not leaked, leaked
    logged = [r for r in caplog.records if getattr(r, "reason_code", "") == "PARTICIPANT_UNAVAILABLE"]
    assert logged and details in str(getattr(logged[0], "detail", "")), "the detail belongs in the logs"
    assert getattr(logged[0], "order_id", "") == order.order_id


async def test_a_participant_that_failed_mid_call_is_named_without_its_error_text() -> None:
    failure = _rpc_failure("payment service", grpc.StatusCode.UNKNOWN, "Stream removed (Socket closed)")
    order = await saga(MemoryStore()).run(new_order(), FakeParticipants(authorize_payment=failure))
    assert order.status is OrderStatus.CANCELLED
    assert order.status_reason == "payment service failed to complete the request"
    timeout = _rpc_failure("payment service", grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    order = await saga(MemoryStore()).run(new_order(), FakeParticipants(authorize_payment=timeout))
    assert order.status_reason == "payment service did not answer in time"


async def test_a_compensation_that_fails_in_transport_is_reported_in_stable_words() -> None:
    refused = _rpc_failure(
        "shipping service", grpc.StatusCode.FAILED_PRECONDITION, "shipping to 'AQ' is not supported"
    )
    down = _rpc_failure(
        "inventory service",
        grpc.StatusCode.UNKNOWN,
        "Unexpected <class 'UnicodeEncodeError'>: 'utf-8' codec can't encode",
    )
    fake = FakeParticipants(schedule_shipment=refused, release_stock=down)
    order = await saga(MemoryStore()).run(new_order(), fake)
    assert order.status is not OrderStatus.CANCELLED  # stuck until the release succeeds
    assert "shipping to 'AQ' is not supported" in order.status_reason  # the participant's own words
    assert "inventory service failed to complete the request" in order.status_reason
    leaked = [t for t in _texts(order) if any(i in t for i in INTERNAL_TEXT)]
    assert not leaked, leaked


async def test_a_refusal_that_is_not_a_business_rule_is_not_quoted() -> None:
    failure = _rpc_failure(
        "payment service", grpc.StatusCode.UNAUTHENTICATED, "token signed by key 'svc-2' at 10.0.0.7"
    )
    order = await saga(MemoryStore()).run(new_order(), FakeParticipants(authorize_payment=failure))
    assert order.status_reason == "payment service refused the request"


def test_every_documented_reason_is_in_the_docs() -> None:
    from pathlib import Path

    from services.order.reasons import ReasonCode

    docs = (Path(__file__).parents[3] / "docs" / "limits.md").read_text()
    for code in ReasonCode:
        assert f"`{code.value}`" in docs, code


async def test_a_fake_unavailable_participant_gets_the_same_words() -> None:
    down = StepFailure(FailureKind.UNAVAILABLE, "payment service", "down: ipv4:10.1.2.3:5000")
    order = await saga(MemoryStore()).run(new_order(), FakeParticipants(authorize_payment=down))
    assert order.status_reason == "payment service is unavailable"
