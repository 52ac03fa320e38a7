"""SPIFFE IDs and the CN a client expects of a server: Consul's own rules, pinned by examples
taken from a real 1.8.7 agent's certificates (tests/integration/mesh/test_mtls_names.py checks
them against the agent itself)."""

from __future__ import annotations

import pytest

from mesh.connect.spiffe import SpiffeId, server_name

DOMAIN = "a140f1d5-ff88-4ebc-8d09-21d80f1bac7e.consul"


def test_a_consul_service_uri_parses_and_prints_back() -> None:
    uri = f"spiffe://{DOMAIN}/ns/default/dc/dc1/svc/order"
    spiffe = SpiffeId.parse(uri)
    assert spiffe == SpiffeId(DOMAIN, "default", "dc1", "order")
    assert spiffe.uri == str(spiffe) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "https://x.consul/ns/default/dc/dc1/svc/order",
        "spiffe:///ns/default/dc/dc1/svc/order",
        f"spiffe://{DOMAIN}/ns/default/dc/dc1/agent/order",
        f"spiffe://{DOMAIN}/ns/default/dc//svc/order",
        f"spiffe://{DOMAIN}/ns/default/dc/dc1/svc/order/extra",
    ],
)
def test_anything_but_a_service_identity_is_refused_with_the_uri_named(uri: str) -> None:
    with pytest.raises(ValueError, match=r"SPIFFE ID|Consul service identity") as refused:
        SpiffeId.parse(uri)
    assert repr(uri) in str(refused.value)


@pytest.mark.parametrize(
    ("service", "expected"),
    [
        ("order", "order.svc.default.a140f1d5.consul"),
        ("UPPER", "upper.svc.default.a140f1d5.consul"),
        ("x-y", "xy.svc.default.a140f1d5.consul"),
        ("Foo-Bar_baz.x", "foobarbazx.svc.default.a140f1d5.consul"),
        ("with space", "withspace.svc.default.a140f1d5.consul"),
        ("näme", "nme.svc.default.a140f1d5.consul"),
        ("a" * 70, "a" * 36 + ".svc.default.a140f1d5.consul"),
    ],
)
def test_the_server_name_is_the_cn_consul_writes(service: str, expected: str) -> None:
    assert server_name(service, DOMAIN) == expected
    assert len(server_name(service, DOMAIN)) <= 64
