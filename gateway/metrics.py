"""Prometheus metrics of one gateway, in its own registry (several gateways can share a process).

Label values are bounded: the route label is the rule's template (``/v1/orders/{order_id}``),
never the raw path, and children are cached so the hot path does one dict lookup.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._requests = Counter(
            "gateway_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "gateway_request_duration_seconds",
            "Time from a parsed request to its response, by route template.",
            ["route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._upstream = Counter(
            "gateway_upstream_calls",
            "Calls made to upstream services, by RPC and gRPC status code.",
            ["rpc", "code"],
            registry=self.registry,
        )
        self.auth_failures = Counter(
            "gateway_auth_failures",
            "Requests refused for a missing or invalid token.",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited", "Requests refused by the rate limiter.", registry=self.registry
        )
        self.in_flight = Gauge("gateway_in_flight_requests", "Requests being served.", registry=self.registry)
        self.open_connections = Gauge(
            "gateway_open_connections", "Client connections open now.", registry=self.registry
        )
        self._connections_closed = Counter(
            "gateway_connections_closed",
            "Connections the gateway closed to protect itself, by reason "
            "(header_timeout, over_capacity, reclaimed_idle).",
            ["reason"],
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, int], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        self._upstream_children: dict[tuple[str, str], Counter] = {}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self._requests.labels(route, method, str(status))
        child.inc()
        latency = self._latency_children.get(route)
        if latency is None:
            latency = self._latency_children[route] = self._latency.labels(route)
        latency.observe(seconds)

    def upstream(self, rpc: str, code: str) -> None:
        key = (rpc, code)
        child = self._upstream_children.get(key)
        if child is None:
            child = self._upstream_children[key] = self._upstream.labels(rpc, code)
        child.inc()

    def connection_closed(self, reason: str) -> None:
        """Count a connection the HTTP server closed for ``reason`` (its ``on_close`` hook)."""
        self._connections_closed.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
