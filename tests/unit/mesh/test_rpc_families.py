"""RpcFamilies: numbers kept per method, read by the registry as prometheus_client would show them."""

from __future__ import annotations

import time

import grpc
from prometheus_client import CollectorRegistry, generate_latest

from mesh.metrics.families import rpc_families
from mesh.rpc import RpcCache

LABELS = {
    "grpc_service": "shop.inventory.v1.InventoryService",
    "grpc_method": "GetProduct",
    "grpc_type": "unary",
}


def test_calls_are_counted_timed_and_bucketed_with_le_inclusive() -> None:
    registry = CollectorRegistry()
    families = rpc_families(registry, "server")
    rpc = RpcCache().get("/shop.inventory.v1.InventoryService/GetProduct", "unary")
    metrics = families.method(rpc)
    assert families.method(rpc) is metrics
    for seconds, code in (
        (0.003, grpc.StatusCode.OK),
        (0.03, grpc.StatusCode.OK),
        (20.0, grpc.StatusCode.NOT_FOUND),
    ):
        metrics.begin()
        metrics.end(time.perf_counter() - seconds, code)
    open_call = metrics.begin()
    sample = registry.get_sample_value
    assert sample("grpc_server_started_total", LABELS) == 4
    assert sample("grpc_server_in_flight_calls", LABELS) == 1
    assert sample("grpc_server_handled_total", {**LABELS, "grpc_code": "OK"}) == 2
    assert sample("grpc_server_handled_total", {**LABELS, "grpc_code": "NOT_FOUND"}) == 1
    bucket = "grpc_server_handling_seconds_bucket"
    assert sample(bucket, {**LABELS, "le": "0.005"}) == 1
    assert sample(bucket, {**LABELS, "le": "0.025"}) == 1
    assert sample(bucket, {**LABELS, "le": "0.05"}) == 2
    assert sample(bucket, {**LABELS, "le": "10.0"}) == 2
    assert sample(bucket, {**LABELS, "le": "+Inf"}) == 3
    assert sample("grpc_server_handling_seconds_count", LABELS) == 3
    total = sample("grpc_server_handling_seconds_sum", LABELS)
    assert total is not None and 20.03 <= total < 20.2
    assert sample("grpc_server_started_created", LABELS) is not None
    metrics.end(open_call, grpc.StatusCode.OK)
    assert sample("grpc_server_in_flight_calls", LABELS) == 0


def test_the_exposition_names_the_families_as_go_grpc_prometheus_does() -> None:
    registry = CollectorRegistry()
    rpc_families(registry, "client").method(RpcCache().get("/a.B/C", "unary")).begin()
    text = generate_latest(registry).decode()
    for line in (
        "# TYPE grpc_client_started_total counter",
        "# TYPE grpc_client_handled_total counter",
        "# TYPE grpc_client_handling_seconds histogram",
        "# TYPE grpc_client_in_flight_calls gauge",
        'grpc_client_started_total{grpc_method="C",grpc_service="a.B",grpc_type="unary"} 1.0',
    ):
        assert line in text, text
