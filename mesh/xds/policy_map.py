"""The call policy file as the xDS fields grpc clients honour, and nothing they would ignore.

Why a mapping of its own: a plain grpc client can only do what gRFCs A31 (timeouts), A44
(retries), A28/A42/A58 (balancing), A50 (outlier detection) and A33 (fault injection) let
an xDS server ask of it, which is less than the mesh channel does. Each function here turns
one policy object into the nearest xDS field and leaves out what cannot be said, so what is
lost is decided (and documented, in docs/xds.md) in one place:

* retries only for calls the policy marks ``idempotent = true``: an A44 retry sees no
  idempotency key and no retry budget, so it may only repeat what is always safe to repeat;
* only CANCELLED, DEADLINE_EXCEEDED, INTERNAL, RESOURCE_EXHAUSTED and UNAVAILABLE can be
  retried (grpc ignores every other ``retry_on`` name);
* the mesh's consecutive-failure ejection becomes failure-percentage ejection, the only
  kind gRPC implements besides success rate;
* p2c has no xDS equivalent gRPC for Python accepts (no least_request), so it is round robin.

Every function is pure and builds the same bytes for the same input.
"""

from __future__ import annotations

from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.common.fault.v3 import fault_pb2 as common_fault_pb2
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3 import (
    client_side_weighted_round_robin_pb2,
)
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.load_balancing_policies.wrr_locality.v3 import wrr_locality_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

from mesh.balancer.outlier import OutlierPolicy
from mesh.resilience.policy_config import RING_HASH, BalancerConfig, CallPolicy, FaultConfig

FAULT_FILTER = "envoy.filters.http.fault"
# The status codes an A44 retry policy can name, in grpc's spelling of ``retry_on``.
RETRY_ON = {
    "CANCELLED": "cancelled",
    "DEADLINE_EXCEEDED": "deadline-exceeded",
    "INTERNAL": "internal",
    "RESOURCE_EXHAUSTED": "resource-exhausted",
    "UNAVAILABLE": "unavailable",
}
# gRPC caps a ring at 4096 entries unless the client raises a channel argument; asking for
# more only wastes the client's memory. 1024 is already ~340 points per endpoint at 3.
RING_SIZE = (1024, 4096)
# Failure-percentage ejection (A50), for the mesh's "N consecutive failures": an endpoint
# failing more than this share of at least ``consecutive_failures`` calls in one interval.
FAILURE_PERCENT_THRESHOLD = 85  # gRPC's and Envoy's own default: grpc counts *every* non-OK
EJECTION_INTERVAL = 1.0  # seconds between sweeps: ejection within ~1-2 s of the failures
EJECTION_MINIMUM_HOSTS = 2  # never eject the only endpoint: nothing would be left to call
MESH_OUTLIER = OutlierPolicy()


def duration(seconds: float) -> duration_pb2.Duration:
    """``seconds`` as a protobuf Duration, rounded to the nanosecond."""
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1_000_000_000))
    return value


def pack(message: Message) -> any_pb2.Any:
    """``message`` in an Any, serialized deterministically so equal inputs give equal bytes."""
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed


def percent(value: float) -> Any:
    """A 0..100 percentage as the FractionalPercent per million grpc reads exactly."""
    return percent_pb2.FractionalPercent(
        numerator=round(value * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )


def stream_duration(call: CallPolicy) -> Any | None:
    """The policy's timeout as A31's ``max_stream_duration`` (None: the caller's own deadline).

    gRPC reads ``grpc_timeout_header_max`` first and ``max_stream_duration`` otherwise; both
    carry the same value, so Envoy and every grpc language agree.
    """
    if call.timeout is None:
        return None
    limit = duration(call.timeout)
    return route_components_pb2.RouteAction.MaxStreamDuration(
        max_stream_duration=limit, grpc_timeout_header_max=limit
    )


def retry_policy(call: CallPolicy) -> Any | None:
    """A44 retries for a call the policy marks idempotent; None for any other call.

    None also when the policy allows no retries or names none of the codes A44 can retry.
    ``num_retries`` excludes the first attempt; the backoff multiplier cannot be sent (grpc
    uses 2) and ``per_attempt_timeout`` has no field grpc reads.
    """
    retry = call.retry
    codes = sorted(RETRY_ON[code] for code in retry.retryable_codes if code in RETRY_ON)
    if call.idempotent is not True or retry.max_attempts < 2 or not codes:
        return None
    return route_components_pb2.RetryPolicy(
        retry_on=",".join(codes),
        num_retries=wrappers_pb2.UInt32Value(value=retry.max_attempts - 1),
        retry_back_off=route_components_pb2.RetryPolicy.RetryBackOff(
            base_interval=duration(retry.backoff.initial), max_interval=duration(retry.backoff.maximum)
        ),
    )


def hash_policies(balancer: BalancerConfig) -> list[Any]:
    """The route's ring-hash key: the configured request header (none for other kinds)."""
    if balancer.kind != RING_HASH or balancer.hash_header is None:
        return []
    header = route_components_pb2.RouteAction.HashPolicy.Header(header_name=balancer.hash_header)
    return [route_components_pb2.RouteAction.HashPolicy(header=header)]


def apply_balancer(cluster: Any, balancer: BalancerConfig) -> None:
    """Set ``cluster``'s load-balancing policy for ``balancer.kind``.

    p2c, p2c_ewma and round_robin become ROUND_ROBIN (gRPC for Python has no least_request);
    ring_hash is RING_HASH with a small ring; weighted_round_robin (A58) is sent as
    ``load_balancing_policy`` with round robin as the fallback for clients without it.
    least_request is sent as asked, for Go and Java clients (and Envoy), which balance by it;
    grpc core (Python, C++) NACKs such a cluster and keeps its previous one.
    """
    if balancer.kind == RING_HASH:
        cluster.lb_policy = cluster_pb2.Cluster.RING_HASH
        cluster.ring_hash_lb_config.CopyFrom(
            cluster_pb2.Cluster.RingHashLbConfig(
                minimum_ring_size=wrappers_pb2.UInt64Value(value=RING_SIZE[0]),
                maximum_ring_size=wrappers_pb2.UInt64Value(value=RING_SIZE[1]),
                hash_function=cluster_pb2.Cluster.RingHashLbConfig.XX_HASH,
            )
        )
    elif balancer.kind == "weighted_round_robin":
        endpoint_picking = _lb_policies(
            ("envoy.load_balancing_policies.client_side_weighted_round_robin", _weighted_round_robin()),
            ("envoy.load_balancing_policies.round_robin", round_robin_pb2.RoundRobin()),
        )
        wrr_locality = wrr_locality_pb2.WrrLocality(endpoint_picking_policy=endpoint_picking)
        cluster.load_balancing_policy.CopyFrom(
            _lb_policies(("envoy.load_balancing_policies.wrr_locality", wrr_locality))
        )
    elif balancer.kind == "least_request":
        cluster.lb_policy = cluster_pb2.Cluster.LEAST_REQUEST
    else:
        cluster.lb_policy = cluster_pb2.Cluster.ROUND_ROBIN


def _weighted_round_robin() -> Any:
    """A58's policy with its defaults; without ORCA reports every weight is equal (round robin)."""
    return client_side_weighted_round_robin_pb2.ClientSideWeightedRoundRobin()


def _lb_policies(*policies: tuple[str, Message]) -> Any:
    """A LoadBalancingPolicy listing ``(name, config)`` in preference order."""
    return cluster_pb2.LoadBalancingPolicy(
        policies=[
            cluster_pb2.LoadBalancingPolicy.Policy(
                typed_extension_config=extension_pb2.TypedExtensionConfig(
                    name=name, typed_config=pack(config)
                )
            )
            for name, config in policies
        ]
    )


def outlier_detection(policy: OutlierPolicy = MESH_OUTLIER) -> Any:
    """The mesh's outlier ejection as A50 failure-percentage ejection.

    The request volume is the mesh's ``consecutive_failures`` (the same evidence before a
    verdict); ejection times and the ejected share are the mesh's own. gRPC always allows
    the first ejection, so with 2 or 3 endpoints one failing endpoint is ejected, never two:
    that cap stands in for the mesh's panic threshold. Success-rate ejection is turned off
    explicitly (Envoy would run it by default).
    """
    return outlier_detection_pb2.OutlierDetection(
        interval=duration(EJECTION_INTERVAL),
        base_ejection_time=duration(policy.base_ejection),
        max_ejection_time=duration(policy.max_ejection),
        max_ejection_percent=wrappers_pb2.UInt32Value(value=round(policy.max_ejected_share * 100)),
        enforcing_success_rate=wrappers_pb2.UInt32Value(value=0),
        enforcing_failure_percentage=wrappers_pb2.UInt32Value(value=100),
        failure_percentage_threshold=wrappers_pb2.UInt32Value(value=FAILURE_PERCENT_THRESHOLD),
        failure_percentage_minimum_hosts=wrappers_pb2.UInt32Value(value=EJECTION_MINIMUM_HOSTS),
        failure_percentage_request_volume=wrappers_pb2.UInt32Value(value=policy.consecutive_failures),
    )


def fault_filter(fault: FaultConfig) -> Any | None:
    """The A33 HTTPFault filter for ``fault``; None when it injects nothing."""
    if not fault.active:
        return None
    config = fault_pb2.HTTPFault()
    if fault.abort_percent > 0:
        config.abort.CopyFrom(
            fault_pb2.FaultAbort(
                grpc_status=grpc.StatusCode[fault.abort_code].value[0],
                percentage=percent(fault.abort_percent),
            )
        )
    if fault.delay_percent > 0 and fault.delay_seconds is not None:
        config.delay.CopyFrom(
            common_fault_pb2.FaultDelay(
                fixed_delay=duration(fault.delay_seconds), percentage=percent(fault.delay_percent)
            )
        )
    return http_connection_manager_pb2.HttpFilter(name=FAULT_FILTER, typed_config=pack(config))
