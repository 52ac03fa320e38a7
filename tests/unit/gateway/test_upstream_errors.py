"""Whose status is it: the upstream's own answer passes through, grpc-core's is the gateway's."""

from __future__ import annotations

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway.errors import STATUS_DETAILS_KEY, upstream_answer


def _error(
    code: grpc.StatusCode, details: str, rich: status_pb2.Status | None = None
) -> grpc.aio.AioRpcError:
    trailers = grpc.aio.Metadata()
    if rich is not None:
        trailers.add(STATUS_DETAILS_KEY, rich.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, details, None)


@pytest.mark.parametrize(
    ("code", "http", "answered", "reason"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 502, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_FAILED"),
        (grpc.StatusCode.UNKNOWN, 502, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_FAILED"),
        (grpc.StatusCode.INTERNAL, 502, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_FAILED"),
        (grpc.StatusCode.UNAUTHENTICATED, 502, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_FAILED"),
        (grpc.StatusCode.UNAVAILABLE, 503, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, grpc.StatusCode.DEADLINE_EXCEEDED, "UPSTREAM_TIMEOUT"),
    ],
)
def test_a_status_grpc_core_may_have_made_up_is_the_gateways_own(
    code: grpc.StatusCode, http: int, answered: grpc.StatusCode, reason: str
) -> None:
    answer = upstream_answer(
        _error(code, "Stream removed (received metadata size exceeds hard limit)"), "order"
    )
    assert not answer.own and answer.http_status == http
    assert answer.status.code == answered.value[0] and "Stream removed" not in answer.status.message
    info = error_details_pb2.ErrorInfo()
    assert answer.status.details[0].Unpack(info)
    assert info.reason == reason and dict(info.metadata) == {"upstream": "order", "grpc_code": code.name}


def test_a_status_with_the_upstreams_rich_status_passes_through() -> None:
    rich = status_pb2.Status(code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], message="quota used up")
    answer = upstream_answer(_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota used up", rich), "order")
    assert answer.own and answer.http_status == 429 and answer.status == rich


def test_a_rich_status_with_another_code_does_not_vouch_for_the_call() -> None:
    rich = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="stale")
    answer = upstream_answer(_error(grpc.StatusCode.INTERNAL, "boom", rich), "order")
    assert not answer.own and answer.http_status == 502


def test_a_code_the_library_never_generates_is_the_upstreams_even_without_details() -> None:
    answer = upstream_answer(_error(grpc.StatusCode.NOT_FOUND, "no order 'x'"), "order")
    assert answer.own and answer.http_status == 404 and answer.status.message == "no order 'x'"
