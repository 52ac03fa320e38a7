"""The gateway's Prometheus metrics: names, labels and counts as a dashboard reads them."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import CONTENT_TYPE, GatewayMetrics


def samples(metrics: GatewayMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.render().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_requests_are_counted_by_route_template_method_and_status() -> None:
    metrics = GatewayMetrics()
    route = "/v1/orders/{order_id}"
    metrics.request(route, "GET", 200, 0.004)
    metrics.request(route, "GET", 200, 0.2)
    metrics.request(route, "GET", 404, 0.001)
    found = samples(metrics)
    labels = {("route", route), ("method", "GET")}
    assert found["gateway_requests_total", frozenset({*labels, ("status", "200")})] == 2
    assert found["gateway_requests_total", frozenset({*labels, ("status", "404")})] == 1
    assert found["gateway_request_duration_seconds_count", frozenset({("route", route)})] == 3
    assert (
        found["gateway_request_duration_seconds_bucket", frozenset({("route", route), ("le", "0.005")})] == 2
    )
    assert found["gateway_request_duration_seconds_sum", frozenset({("route", route)})] == pytest.approx(
        0.205
    )


def test_upstream_calls_auth_failures_rate_limits_and_in_flight() -> None:
    metrics = GatewayMetrics()
    metrics.upstream("shop.order.v1.OrderService.GetOrder", "OK")
    metrics.upstream("shop.order.v1.OrderService.GetOrder", "OK")
    metrics.upstream("shop.order.v1.OrderService.GetOrder", "UNAVAILABLE")
    metrics.auth_failures.inc()
    metrics.rate_limited.inc(3)
    metrics.in_flight.inc()
    found = samples(metrics)
    rpc = ("rpc", "shop.order.v1.OrderService.GetOrder")
    assert found["gateway_upstream_calls_total", frozenset({rpc, ("code", "OK")})] == 2
    assert found["gateway_upstream_calls_total", frozenset({rpc, ("code", "UNAVAILABLE")})] == 1
    assert found["gateway_auth_failures_total", frozenset()] == 1
    assert found["gateway_rate_limited_total", frozenset()] == 3
    assert found["gateway_in_flight_requests", frozenset()] == 1


def test_each_gateway_has_its_own_registry_unless_given_one() -> None:
    first, second = GatewayMetrics(), GatewayMetrics()
    first.request("/a", "GET", 200, 0.1)
    assert b'route="/a"' in first.render() and b'route="/a"' not in second.render()
    shared = CollectorRegistry()
    assert GatewayMetrics(shared).registry is shared
    assert CONTENT_TYPE.startswith("text/plain")
