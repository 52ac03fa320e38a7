"""The xDS resources built from a catalog snapshot and a policy file, checked field by field.

Each resource is read back the way a client reads it (unpacking every ``Any``), so a test
fails when a client would see something else: a wrong name, a missing locality weight, a
retry on a call that is not safe to repeat, a filter after the router.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2, health_check_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3 import (
    client_side_weighted_round_robin_pb2,
)
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.load_balancing_policies.wrr_locality.v3 import wrr_locality_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.type.v3 import percent_pb2

from mesh.errors import ConfigError
from mesh.resilience.policy_config import BalancerConfig, FaultConfig, PolicySettings, parse_policy
from mesh.xds import policy_map
from mesh.xds.model import (
    CLUSTER,
    CLUSTER_LOAD_ASSIGNMENT,
    LISTENER,
    RESOURCE_TYPES,
    ROUTE_CONFIGURATION,
    CatalogSnapshot,
    XdsEndpoint,
    XdsService,
)
from mesh.xds.resources import ResourceSet, XdsSecurity, build_resources, encode

TRUST_DOMAIN = "8cfeacc5-6a0c-4f4e-9c55-0e3c2b1d7a10.consul"
SECURITY = XdsSecurity(trust_domain=TRUST_DOMAIN, datacenter="dc1")
REFUND = "/shop.payment.v1.PaymentService/Refund"

POLICY = f"""
[defaults]
timeout = 5.0

[defaults.retry]
max_attempts = 3
retryable_codes = ["UNAVAILABLE", "ABORTED"]
initial_backoff = 0.05
max_backoff = 1.0

[services.payment]
timeout = 2.0

[services.payment.methods.Capture]
timeout = 10.0

[services.payment.methods."{REFUND}"]
idempotent = true

[services.payment.methods.Status]
idempotent = true

[services.payment.methods.Status.retry]
retryable_codes = ["UNAVAILABLE", "INTERNAL", "UNKNOWN"]

[services.inventory]
idempotent = true

[services.inventory.balancer]
kind = "ring_hash"
hash_header = "x-user-id"

[services.inventory.fault]
abort_percent = 12.5
abort_code = "internal"
delay_percent = 50
delay_seconds = 0.25
"""


def endpoint(
    instance: str, address: str, node: str, *, healthy: bool = True, port: int = 7000
) -> XdsEndpoint:
    return XdsEndpoint(instance, address, port, node, "dc1", healthy)


INVENTORY = XdsService(
    "inventory",
    (
        endpoint("inventory-3", "10.0.0.3", "node-b"),
        endpoint("inventory-1", "10.0.0.1", "node-a"),
        endpoint("inventory-2", "10.0.0.2", "node-a", healthy=False),
        endpoint("inventory-4", "10.0.0.4", "node-a"),
    ),
)
PAYMENT = XdsService(
    "payment", (endpoint("payment-1", "10.0.1.1", "node-a"), endpoint("payment-2", "10.0.1.2", "node-b"))
)
GHOST = XdsService("ghost", ())


def snapshot(*services: XdsService) -> CatalogSnapshot:
    return CatalogSnapshot({service.name: service for service in services})


def policy(text: str = POLICY) -> PolicySettings:
    return parse_policy(tomllib.loads(text))


@pytest.fixture
def built() -> ResourceSet:
    return build_resources(snapshot(PAYMENT, INVENTORY, GHOST), policy(), SECURITY)


def unpack(packed: Any, message_type: Any) -> Any:
    message = message_type()
    assert packed.Unpack(message), f"{packed.type_url} is not {message_type.DESCRIPTOR.full_name}"
    return message


def manager(built: ResourceSet, name: str) -> Any:
    listener: Any = built.of_type(LISTENER)[name]
    return unpack(listener.api_listener.api_listener, http_connection_manager_pb2.HttpConnectionManager)


def routes(built: ResourceSet, name: str) -> dict[str, Any]:
    config: Any = built.of_type(ROUTE_CONFIGURATION)[name]
    (host,) = config.virtual_hosts
    assert list(host.domains) == ["*"]
    return {route.name: route for route in host.routes}


def seconds(duration: Any) -> float:
    return float(duration.ToNanoseconds()) / 1e9


# -- the four types and their names ------------------------------------------------------------


def test_every_service_gets_all_four_resources_named_after_it(built: ResourceSet) -> None:
    assert set(built.resources) == set(RESOURCE_TYPES)
    for type_url in RESOURCE_TYPES:
        assert built.names(type_url) == ("ghost", "inventory", "payment")
        for name, message in built.of_type(type_url).items():
            resource: Any = message
            resource_name = resource.cluster_name if type_url == CLUSTER_LOAD_ASSIGNMENT else resource.name
            assert resource_name == name
    assert built.of_type("type.googleapis.com/unknown") == {}


def test_an_empty_catalog_builds_empty_types() -> None:
    built = build_resources(CatalogSnapshot(), PolicySettings(), None)
    assert {type_url: dict(built.of_type(type_url)) for type_url in RESOURCE_TYPES} == {
        type_url: {} for type_url in RESOURCE_TYPES
    }


# -- listener ----------------------------------------------------------------------------------


def test_the_listener_takes_its_routes_by_rds_over_ads(built: ResourceSet) -> None:
    hcm = manager(built, "payment")
    assert hcm.rds.route_config_name == "payment"
    assert hcm.rds.config_source.HasField("ads")
    assert hcm.rds.config_source.resource_api_version == config_source_pb2.V3
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]
    unpack(hcm.http_filters[0].typed_config, router_pb2.Router)


def test_the_fault_filter_is_only_where_configured_and_before_the_router(built: ResourceSet) -> None:
    filters = manager(built, "inventory").http_filters
    assert [f.name for f in filters] == ["envoy.filters.http.fault", "envoy.filters.http.router"]
    fault = unpack(filters[0].typed_config, fault_pb2.HTTPFault)
    assert fault.abort.grpc_status == 13  # INTERNAL
    assert fault.abort.percentage.numerator == 125_000
    assert fault.abort.percentage.denominator == percent_pb2.FractionalPercent.MILLION
    assert seconds(fault.delay.fixed_delay) == 0.25
    assert fault.delay.percentage.numerator == 500_000
    assert [f.name for f in manager(built, "ghost").http_filters] == ["envoy.filters.http.router"]


def test_an_abort_only_fault_sends_no_delay() -> None:
    fault = policy_map.fault_filter(FaultConfig(abort_percent=100))
    assert fault is not None
    config = unpack(fault.typed_config, fault_pb2.HTTPFault)
    assert config.abort.grpc_status == 14  # UNAVAILABLE, the default code
    assert config.abort.percentage.numerator == 1_000_000
    assert not config.HasField("delay")
    assert policy_map.fault_filter(FaultConfig()) is None


# -- routes ------------------------------------------------------------------------------------


def test_method_routes_come_before_the_default_route(built: ResourceSet) -> None:
    config: Any = built.of_type(ROUTE_CONFIGURATION)["payment"]
    ordered = config.virtual_hosts[0].routes
    assert [route.name for route in ordered] == [REFUND, "Capture", "Status", "default"]
    assert ordered[0].match.path == REFUND
    assert ordered[1].match.safe_regex.regex == "^/[^/]+/Capture$"
    assert ordered[3].match.prefix == "/"
    assert {route.route.cluster for route in ordered} == {"payment"}


def test_timeouts_become_max_stream_duration(built: ResourceSet) -> None:
    payment = routes(built, "payment")
    assert seconds(payment["Capture"].route.max_stream_duration.max_stream_duration) == 10.0
    assert seconds(payment["Capture"].route.max_stream_duration.grpc_timeout_header_max) == 10.0
    assert seconds(payment["default"].route.max_stream_duration.max_stream_duration) == 2.0
    assert seconds(routes(built, "ghost")["default"].route.max_stream_duration.max_stream_duration) == 5.0
    no_timeout = build_resources(snapshot(GHOST), PolicySettings(), None)
    assert not routes(no_timeout, "ghost")["default"].route.HasField("max_stream_duration")


def test_only_idempotent_calls_are_retried(built: ResourceSet) -> None:
    payment = routes(built, "payment")
    assert not payment["Capture"].route.HasField("retry_policy")  # not marked idempotent
    assert not payment["default"].route.HasField("retry_policy")
    assert not routes(built, "ghost")["default"].route.HasField("retry_policy")  # [defaults] cannot
    refund = payment[REFUND].route.retry_policy
    assert refund.retry_on == "unavailable"  # ABORTED has no A44 name: dropped
    assert refund.num_retries.value == 2
    assert seconds(refund.retry_back_off.base_interval) == 0.05
    assert seconds(refund.retry_back_off.max_interval) == 1.0
    status = payment["Status"].route.retry_policy
    assert status.retry_on == "internal,unavailable"  # UNKNOWN dropped
    service_wide = routes(built, "inventory")["default"].route.retry_policy
    assert service_wide.retry_on == "unavailable" and service_wide.num_retries.value == 2


def test_no_retry_policy_when_no_code_can_be_retried_by_xds() -> None:
    text = '[services.payment]\nidempotent = true\n[services.payment.retry]\nmax_attempts = 4\nretryable_codes = ["ABORTED"]\n'
    built = build_resources(snapshot(PAYMENT), policy(text), None)
    assert not routes(built, "payment")["default"].route.HasField("retry_policy")


def test_ring_hash_hashes_the_configured_header(built: ResourceSet) -> None:
    for route in routes(built, "inventory").values():
        (hashing,) = route.route.hash_policy
        assert hashing.header.header_name == "x-user-id"
    assert all(not r.route.hash_policy for r in routes(built, "payment").values())
    cluster: Any = built.of_type(CLUSTER)["inventory"]
    assert cluster.lb_policy == cluster_pb2.Cluster.RING_HASH
    assert cluster.ring_hash_lb_config.minimum_ring_size.value == 1024
    assert cluster.ring_hash_lb_config.maximum_ring_size.value == 4096


# -- clusters ----------------------------------------------------------------------------------


def test_the_cluster_takes_its_endpoints_by_eds_over_ads(built: ResourceSet) -> None:
    cluster: Any = built.of_type(CLUSTER)["payment"]
    assert cluster.type == cluster_pb2.Cluster.EDS
    assert cluster.eds_cluster_config.eds_config.HasField("ads")
    assert cluster.eds_cluster_config.eds_config.resource_api_version == config_source_pb2.V3
    assert cluster.eds_cluster_config.service_name == "payment"
    assert cluster.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN  # p2c has no gRPC xDS equivalent
    assert not cluster.HasField("load_balancing_policy")
    assert not cluster.HasField("circuit_breakers")


def test_mtls_names_the_provider_and_the_services_spiffe_id(built: ResourceSet) -> None:
    cluster: Any = built.of_type(CLUSTER)["payment"]
    assert cluster.transport_socket.name == "envoy.transport_sockets.tls"
    upstream = unpack(cluster.transport_socket.typed_config, tls_pb2.UpstreamTlsContext)
    common = upstream.common_tls_context
    assert common.tls_certificate_provider_instance.instance_name == "mesh"
    validation = common.validation_context
    assert validation.ca_certificate_provider_instance.instance_name == "mesh"
    assert [m.exact for m in validation.match_subject_alt_names] == [
        f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/payment"
    ]
    assert not validation.match_typed_subject_alt_names


def test_plaintext_without_security_and_another_provider_name() -> None:
    plain: Any = build_resources(snapshot(PAYMENT), PolicySettings(), None).of_type(CLUSTER)["payment"]
    assert not plain.HasField("transport_socket")
    other = XdsSecurity(TRUST_DOMAIN, "dc1", provider_instance="connect")
    federated = XdsService(
        "payment", (*PAYMENT.endpoints, XdsEndpoint("p-9", "10.9.0.1", 7000, "n", "dc2", True))
    )
    cluster: Any = build_resources(snapshot(federated), PolicySettings(), other).of_type(CLUSTER)["payment"]
    upstream = unpack(cluster.transport_socket.typed_config, tls_pb2.UpstreamTlsContext)
    assert upstream.common_tls_context.tls_certificate_provider_instance.instance_name == "connect"
    sans = [m.exact for m in upstream.common_tls_context.validation_context.match_subject_alt_names]
    assert sans == [f"spiffe://{TRUST_DOMAIN}/ns/default/dc/{dc}/svc/payment" for dc in ("dc1", "dc2")]


def test_weighted_round_robin_wraps_a58_in_wrr_locality_with_a_round_robin_fallback() -> None:
    text = '[services.payment.balancer]\nkind = "weighted_round_robin"\n'
    cluster: Any = build_resources(snapshot(PAYMENT), policy(text), None).of_type(CLUSTER)["payment"]
    (outer,) = cluster.load_balancing_policy.policies
    assert outer.typed_extension_config.name == "envoy.load_balancing_policies.wrr_locality"
    locality = unpack(outer.typed_extension_config.typed_config, wrr_locality_pb2.WrrLocality)
    first, fallback = locality.endpoint_picking_policy.policies
    unpack(
        first.typed_extension_config.typed_config,
        client_side_weighted_round_robin_pb2.ClientSideWeightedRoundRobin,
    )
    unpack(fallback.typed_extension_config.typed_config, round_robin_pb2.RoundRobin)


def test_outlier_detection_is_failure_percentage_with_the_mesh_ejection_times(built: ResourceSet) -> None:
    cluster: Any = built.of_type(CLUSTER)["payment"]
    detection = cluster.outlier_detection
    assert detection.enforcing_success_rate.value == 0
    assert detection.enforcing_failure_percentage.value == 100
    assert detection.failure_percentage_request_volume.value == 5  # the mesh's consecutive_failures
    assert detection.failure_percentage_minimum_hosts.value == 2
    assert detection.failure_percentage_threshold.value == 85
    assert seconds(detection.interval) == 1.0
    assert seconds(detection.base_ejection_time) == 30.0
    assert seconds(detection.max_ejection_time) == 300.0
    assert detection.max_ejection_percent.value == 10


def ejected_by_a_sweep(detection: Any, calls: dict[str, tuple[int, int]]) -> list[str]:
    """gRPC's failure-percentage sweep (outlier_detection.cc) over ``{host: (calls, failed)}``."""
    candidates = {
        host: 100.0 * failed / total
        for host, (total, failed) in calls.items()
        if total >= detection.failure_percentage_request_volume.value
    }
    if len(candidates) < detection.failure_percentage_minimum_hosts.value:
        return []
    ejected: list[str] = []
    for host, failure_percent in candidates.items():
        if failure_percent > detection.failure_percentage_threshold.value:
            current_percent = 100.0 * len(ejected) / len(calls)
            if not ejected or current_percent < detection.max_ejection_percent.value:
                ejected.append(host)
    return ejected


@pytest.mark.parametrize("hosts", [2, 3])
def test_one_of_two_or_three_endpoints_failing_every_call_is_ejected(hosts: int) -> None:
    detection = policy_map.outlier_detection()
    calls = {f"host-{i}": (5, 0) for i in range(1, hosts)}
    calls["bad"] = (5, 5)  # five calls in one second, every one UNAVAILABLE
    assert ejected_by_a_sweep(detection, calls) == ["bad"]
    calls["bad"] = (4, 4)  # too few calls to judge
    assert ejected_by_a_sweep(detection, calls) == []


@pytest.mark.parametrize("hosts", [2, 3])
def test_never_more_than_one_of_two_or_three_endpoints_is_ejected(hosts: int) -> None:
    detection = policy_map.outlier_detection()
    assert len(ejected_by_a_sweep(detection, {f"host-{i}": (50, 50) for i in range(hosts)})) == 1


def test_a_lone_endpoint_is_never_ejected() -> None:
    assert ejected_by_a_sweep(policy_map.outlier_detection(), {"only": (50, 50)}) == []


# -- endpoints ---------------------------------------------------------------------------------


def test_endpoints_are_grouped_by_locality_with_a_weight_each(built: ResourceSet) -> None:
    assignment: Any = built.of_type(CLUSTER_LOAD_ASSIGNMENT)["inventory"]
    localities = [
        (
            group.locality.region,
            group.locality.zone,
            group.load_balancing_weight.value,
            [(e.endpoint.address.socket_address.address, e.health_status) for e in group.lb_endpoints],
        )
        for group in assignment.endpoints
    ]
    healthy, unhealthy = health_check_pb2.HEALTHY, health_check_pb2.UNHEALTHY
    assert localities == [
        ("dc1", "node-a", 2, [("10.0.0.1", healthy), ("10.0.0.2", unhealthy), ("10.0.0.4", healthy)]),
        ("dc1", "node-b", 1, [("10.0.0.3", healthy)]),
    ]
    ports = {
        e.endpoint.address.socket_address.port_value for g in assignment.endpoints for e in g.lb_endpoints
    }
    assert ports == {7000}


def test_a_locality_of_unhealthy_instances_still_has_a_weight() -> None:
    sick = XdsService("payment", (endpoint("p-1", "10.0.1.1", "node-a", healthy=False),))
    assignment: Any = build_resources(snapshot(sick), PolicySettings(), None).of_type(CLUSTER_LOAD_ASSIGNMENT)
    (group,) = assignment["payment"].endpoints
    assert group.load_balancing_weight.value == 1
    assert group.lb_endpoints[0].health_status == health_check_pb2.UNHEALTHY


def test_a_service_without_instances_gets_an_assignment_without_endpoints(built: ResourceSet) -> None:
    assignment: Any = built.of_type(CLUSTER_LOAD_ASSIGNMENT)["ghost"]
    assert assignment.cluster_name == "ghost"
    assert list(assignment.endpoints) == []


def test_duplicate_addresses_and_host_names_are_left_out() -> None:
    messy = XdsService(
        "payment",
        (
            endpoint("old", "10.0.1.1", "node-a", healthy=False),
            endpoint("new", "10.0.1.1", "node-a"),
            endpoint("named", "payment.internal", "node-a"),
            endpoint("v6", "fd00::1", "node-a"),
        ),
    )
    assignment: Any = build_resources(snapshot(messy), PolicySettings(), None).of_type(
        CLUSTER_LOAD_ASSIGNMENT
    )
    (group,) = assignment["payment"].endpoints
    sent = [(e.endpoint.address.socket_address.address, e.health_status) for e in group.lb_endpoints]
    assert sent == [("10.0.1.1", health_check_pb2.HEALTHY), ("fd00::1", health_check_pb2.HEALTHY)]
    assert group.load_balancing_weight.value == 2


# -- determinism -------------------------------------------------------------------------------


def test_two_builds_serialize_byte_for_byte_the_same() -> None:
    shuffled = XdsService("inventory", tuple(reversed(INVENTORY.endpoints)))
    first = build_resources(snapshot(PAYMENT, INVENTORY, GHOST), policy(), SECURITY)
    second = build_resources(snapshot(GHOST, shuffled, PAYMENT), policy(), SECURITY)
    for type_url in RESOURCE_TYPES:
        assert list(first.of_type(type_url)) == list(second.of_type(type_url))
        for name, resource in first.of_type(type_url).items():
            assert encode(resource) == encode(second.of_type(type_url)[name]), (type_url, name)


def test_a_policy_change_changes_the_bytes() -> None:
    before = build_resources(snapshot(PAYMENT), policy(), None).of_type(ROUTE_CONFIGURATION)["payment"]
    changed = POLICY.replace("timeout = 2.0", "timeout = 3.0")
    after = build_resources(snapshot(PAYMENT), policy(changed), None).of_type(ROUTE_CONFIGURATION)["payment"]
    assert encode(before) != encode(after)


# -- the policy file's balancer and fault sections ---------------------------------------------


def test_the_new_sections_are_read_into_the_service_policy() -> None:
    settings = policy()
    assert settings.service("inventory").balancer == BalancerConfig("ring_hash", "x-user-id")
    assert settings.service("inventory").fault == FaultConfig(12.5, "INTERNAL", 50.0, 0.25)
    assert settings.service("payment").balancer == BalancerConfig()  # p2c
    assert not settings.service("payment").fault.active


def test_a_layer_replaces_the_balancer_section_below_it_whole() -> None:
    text = (
        '[defaults.balancer]\nkind = "ring_hash"\nhash_header = "x-user-id"\n'
        '[services.payment.balancer]\nkind = "round_robin"\n'
    )
    settings = policy(text)
    assert settings.service("payment").balancer == BalancerConfig("round_robin")
    assert settings.service("other").balancer == BalancerConfig("ring_hash", "x-user-id")


def test_a_fault_can_be_set_from_the_environment() -> None:
    settings = parse_policy({}, {"MESH_POLICY__payment__fault__abort_percent": "100"})
    assert settings.service("payment").fault == FaultConfig(abort_percent=100.0)


INVALID = [
    ('[services.a.balancer]\nkind = "least_requests"', "services.a.balancer.kind: must be one of p2c, "),
    ('[services.a.balancer]\nkind = "ring_hash"', "services.a.balancer.hash_header: is required when kind"),
    (
        '[services.a.balancer]\nkind = "round_robin"\nhash_header = "x-user-id"',
        "services.a.balancer.hash_header: is read only when kind is ring_hash",
    ),
    (
        '[services.a.balancer]\nkind = "ring_hash"\nhash_header = "X-User"',
        "services.a.balancer.hash_header: must be a lower-case metadata key",
    ),
    (
        '[services.a.balancer]\nkind = "ring_hash"\nhash_header = "trace-bin"',
        "services.a.balancer.hash_header: cannot hash a binary or grpc- header",
    ),
    ("[services.a.balancer]\nweight = 2", "services.a.balancer.weight: unknown key (expected one of: kind, "),
    ("[services.a.fault]\nabort_percent = 150", "services.a.fault.abort_percent: must be within 0..100"),
    ("[services.a.fault]\ndelay_percent = -1", "services.a.fault.delay_percent: must be within 0..100"),
    ('[services.a.fault]\nabort_percent = "x"', "services.a.fault.abort_percent: must be a number"),
    ('[services.a.fault]\nabort_code = "OK"', "services.a.fault.abort_code: must name an error status code"),
    ('[services.a.fault]\nabort_code = "NOPE"', "services.a.fault.abort_code: unknown status code"),
    ("[services.a.fault]\ndelay_percent = 10", "services.a.fault.delay_seconds: is required when"),
    ("[services.a.fault]\ndelay_seconds = 1", "services.a.fault.delay_percent: must be > 0"),
    (
        "[services.a.fault]\ndelay_percent = 10\ndelay_seconds = 0",
        "services.a.fault.delay_seconds: must be > 0",
    ),
    ("[defaults.fault]\nabort_percent = 1", "defaults.fault: fault is set per service"),
    ('[services.a.methods.M.balancer]\nkind = "p2c"', "services.a.methods.M.balancer: balancer applies to"),
    ("[services.a.methods.M.fault]\nabort_percent = 1", "services.a.methods.M.fault: fault applies to"),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[message.split(":")[0] for _, message in INVALID])
def test_bad_balancer_and_fault_keys_are_named_by_their_path(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        policy(text)
    assert str(caught.value).startswith(message), str(caught.value)


def test_a_bad_fault_from_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"\(set by MESH_POLICY__a__fault__abort_percent\)$"):
        parse_policy({}, {"MESH_POLICY__a__fault__abort_percent": "101"})
