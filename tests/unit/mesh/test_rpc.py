"""How an RPC is named for metrics, spans and logs (mesh/rpc.py)."""

from __future__ import annotations

import pytest

from mesh.rpc import (
    BIDI_STREAM,
    CLIENT_STREAM,
    HEALTH_PREFIX,
    SERVER_STREAM,
    UNARY,
    Rpc,
    RpcCache,
    call_type,
    rpc_of,
)


def test_a_method_path_splits_into_service_and_method() -> None:
    rpc = rpc_of("/shop.order.v1.OrderService/CreateOrder", UNARY)
    assert rpc == Rpc(
        "/shop.order.v1.OrderService/CreateOrder", "shop.order.v1.OrderService", "CreateOrder", UNARY
    )
    assert rpc.name == "shop.order.v1.OrderService/CreateOrder"  # the span name
    assert rpc_of(b"/pkg.Svc/M", UNARY) == rpc_of("/pkg.Svc/M", UNARY)  # grpc.aio gives bytes or str


def test_a_path_without_a_service_keeps_it_as_the_method() -> None:
    rpc = rpc_of("/Lonely", UNARY)
    assert (rpc.service, rpc.method) == ("unknown", "Lonely")


@pytest.mark.parametrize(
    ("request_streaming", "response_streaming", "expected"),
    [
        (False, False, UNARY),
        (True, False, CLIENT_STREAM),
        (False, True, SERVER_STREAM),
        (True, True, BIDI_STREAM),
    ],
)
def test_call_types_use_go_grpc_prometheus_words(
    request_streaming: bool, response_streaming: bool, expected: str
) -> None:
    assert call_type(request_streaming, response_streaming) == expected


def test_the_cache_resolves_each_method_and_type_once() -> None:
    cache = RpcCache()
    first = cache.get("/pkg.Svc/M", UNARY)
    assert cache.get("/pkg.Svc/M", UNARY) is first
    assert cache.get("/pkg.Svc/M", SERVER_STREAM) is not first


def test_health_checks_are_recognised_by_their_prefix() -> None:
    assert "/grpc.health.v1.Health/Check".startswith(HEALTH_PREFIX)
    assert not "/shop.order.v1.OrderService/CreateOrder".startswith(HEALTH_PREFIX)
