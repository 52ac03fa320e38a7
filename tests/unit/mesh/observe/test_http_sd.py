"""The Prometheus http_sd document built from Consul health rows, and the handler serving it."""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from mesh.errors import RegistryUnavailable
from mesh.observe.http_sd import ConsulRows, label_name, sd_document, sd_handler, target_group


def row(
    service: str,
    instance_id: str,
    *,
    address: str = "127.0.0.1",
    port: int = 7001,
    meta: Mapping[str, str] | None = None,
    node: str = "node-a",
    node_address: str = "10.0.0.1",
    statuses: tuple[str, ...] = ("passing",),
    tags: tuple[str, ...] = (),
) -> dict[str, Any]:
    """One /v1/health/service row, shaped as Consul 1.8.7 answers it."""
    return {
        "Node": {
            "Node": node,
            "Address": node_address,
            "Datacenter": "dc1",
            "TaggedAddresses": {"lan": node_address},
            "Meta": {"consul-network-segment": ""},
        },
        "Service": {
            "ID": instance_id,
            "Service": service,
            "Tags": list(tags),
            "Address": address,
            "Meta": dict(meta if meta is not None else {"metrics_port": "9101"}),
            "Port": port,
        },
        "Checks": [{"CheckID": f"c{i}", "Status": s} for i, s in enumerate(statuses)],
    }


def test_one_group_per_instance_with_its_metrics_port_and_labels() -> None:
    document = sd_document(
        [
            row("payment", "payment-127.0.0.1-7002", port=7002, meta={"metrics_port": "9102"}),
            row(
                "payment", "payment-127.0.0.1-7001", port=7001, meta={"metrics_port": "9101", "version": "1"}
            ),
            row("inventory", "inventory-127.0.0.1-7003", port=7003, meta={"metrics_port": "9103"}),
        ]
    )

    assert [g["targets"] for g in document] == [["127.0.0.1:9103"], ["127.0.0.1:9101"], ["127.0.0.1:9102"]]
    labels = document[1]["labels"]
    assert labels["service"] == "payment"
    assert labels["instance_id"] == "payment-127.0.0.1-7001"
    assert labels["node"] == "node-a"
    # consul_sd's meta labels, so relabeling written for one works with the other.
    assert labels["__meta_consul_service"] == "payment"
    assert labels["__meta_consul_service_port"] == "7001"
    assert labels["__meta_consul_service_address"] == "127.0.0.1"
    assert labels["__meta_consul_address"] == "10.0.0.1"
    assert labels["__meta_consul_dc"] == "dc1"
    assert labels["__meta_consul_service_metadata_metrics_port"] == "9101"
    assert labels["__meta_consul_service_metadata_version"] == "1"
    assert labels["__meta_consul_tagged_address_lan"] == "10.0.0.1"
    assert labels["__meta_consul_metadata_consul_network_segment"] == ""
    assert all(isinstance(v, str) for g in document for v in g["labels"].values())


def test_instances_without_a_usable_metrics_port_are_left_out() -> None:
    document = sd_document(
        [
            row("consul", "consul", meta={}),
            row("legacy", "legacy-1", meta={"version": "1"}),
            row("broken", "broken-1", meta={"metrics_port": "abc"}),
            row("zero", "zero-1", meta={"metrics_port": "0"}),
            row("huge", "huge-1", meta={"metrics_port": "70000"}),
            row("user", "user-1"),
        ]
    )

    assert [g["labels"]["service"] for g in document] == ["user"]


def test_failing_instances_are_listed_with_their_health() -> None:
    document = sd_document(
        [
            row("order", "order-1", statuses=("passing", "critical")),
            row("order", "order-2", statuses=("warning",)),
            row("order", "order-3", statuses=()),
        ]
    )

    assert [g["labels"]["__meta_consul_health"] for g in document] == ["critical", "warning", "passing"]


def test_node_address_stands_in_for_a_missing_service_address_and_ipv6_is_bracketed() -> None:
    group = target_group(row("user", "user-1", address="", node_address="10.1.2.3"))
    assert group is not None and group["targets"] == ["10.1.2.3:9101"]
    assert group["labels"]["__meta_consul_service_address"] == ""

    group = target_group(row("user", "user-2", address="::1"))
    assert group is not None and group["targets"] == ["[::1]:9101"]


def test_tags_and_meta_keys_are_written_as_consul_sd_writes_them() -> None:
    group = target_group(
        row("user", "u", tags=("canary", "v2"), meta={"metrics_port": "9101", "grpc-services": "x"})
    )
    assert group is not None
    assert group["labels"]["__meta_consul_tags"] == ",canary,v2,"
    assert group["labels"]["__meta_consul_service_metadata_grpc_services"] == "x"
    assert label_name("a.b-c/d") == "a_b_c_d"


class FakeRows(ConsulRows):
    def __init__(self, rows: list[dict[str, Any]] | None = None, error: bool = False) -> None:
        super().__init__("127.0.0.1:1")
        self._rows = rows or []
        self._error = error

    async def rows(self) -> list[Mapping[str, Any]]:
        if self._error:
            raise RegistryUnavailable("consul", "connection refused")
        return list(self._rows)


async def test_handler_serves_the_document_as_json() -> None:
    source = FakeRows([row("user", "user-1"), row("consul", "consul", meta={})])
    handler = sd_handler(source)

    response = await handler(make_mocked_request("GET", "/sd"))

    assert response.status == 200
    assert response.content_type == "application/json"  # Prometheus refuses any other type
    assert response.text is not None
    assert json.loads(response.text) == sd_document([row("user", "user-1")])


async def test_handler_answers_503_when_consul_is_unreachable_never_an_empty_list() -> None:
    handler = sd_handler(FakeRows(error=True))

    response = await handler(make_mocked_request("GET", "/sd"))

    assert response.status == 503
    assert response.text is not None and "connection refused" in response.text


def test_consul_address_forms() -> None:
    assert ConsulRows("127.0.0.1:8500").base == "http://127.0.0.1:8500"
    assert ConsulRows("https://consul.example:8501").base == "https://consul.example:8501"


def test_the_meta_key_is_the_one_processes_publish() -> None:
    from mesh.observe.http_sd import METRICS_PORT_META
    from mesh.telemetry import METRICS_PORT_META as PUBLISHED

    assert METRICS_PORT_META == PUBLISHED


async def test_an_unreachable_consul_is_registry_unavailable() -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(RegistryUnavailable, match="catalog/services"):
        await ConsulRows(f"127.0.0.1:{port}", timeout=2).rows()
