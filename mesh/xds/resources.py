"""Listener, route, cluster and endpoints per Consul service: the xDS a grpc client needs.

Why a pure builder: the control plane's whole output is a function of the catalog snapshot,
the policy file and the trust domain, so it is rebuilt from scratch on every change and
compared byte for byte (``encode``) rather than patched, and tested without Consul or a
client. For every service ``N`` it builds four resources, all named ``N``, the chain a
client asking for ``xds:///N`` follows:

* Listener ``N``: an ``api_listener`` whose HttpConnectionManager takes its routes by RDS
  over ADS, with the A33 fault filter before the router when the policy asks for faults;
* RouteConfiguration ``N``: one route per method the policy names (full paths before bare
  names, as :meth:`ServicePolicy.for_method` looks them up), then the default ``/`` route,
  all to cluster ``N``, each with its timeout, retries and ring-hash key;
* Cluster ``N``: EDS over ADS, the balancer, outlier ejection and, with ``security``, mTLS
  through the client's certificate provider and the service's SPIFFE ID as the only SAN;
* ClusterLoadAssignment ``N``: the instances grouped by locality (datacenter, node).

Messages are built fresh per call and must not be modified by the caller.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from mesh.connect.spiffe import SpiffeId
from mesh.resilience.policy_config import CallPolicy, PolicySettings, ServicePolicy
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

ROUTER_FILTER = "envoy.filters.http.router"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
DEFAULT_ROUTE = "default"
_EMPTY: Mapping[str, Message] = MappingProxyType({})


@dataclass(frozen=True)
class XdsSecurity:
    """What a client needs to verify a service's certificate: the Consul CA's names.

    ``provider_instance`` is the certificate provider instance the client's bootstrap
    defines (it supplies both the client's own certificate and the CA bundle).
    """

    trust_domain: str  # the Consul CA's trust domain, e.g. "8cfeacc5-….consul"
    datacenter: str  # the datacenter whose services the control plane serves, e.g. "dc1"
    provider_instance: str = "mesh"
    namespace: str = "default"

    def spiffe_ids(self, service: str, datacenters: Iterable[str] = ()) -> list[str]:
        """The SPIFFE IDs ``service`` may present: one per datacenter it has instances in."""
        names = sorted({self.datacenter, *datacenters})
        return [SpiffeId(self.trust_domain, self.namespace, dc, service).uri for dc in names]


@dataclass(frozen=True)
class ResourceSet:
    """Every resource of one build: type URL (``mesh.xds.model``) -> name -> message.

    Every type in ``RESOURCE_TYPES`` is present, possibly empty; names are in sorted order.
    """

    resources: Mapping[str, Mapping[str, Message]]

    def of_type(self, type_url: str) -> Mapping[str, Message]:
        """The resources of ``type_url`` by name (empty for a type this set has none of)."""
        return self.resources.get(type_url, _EMPTY)

    def names(self, type_url: str) -> tuple[str, ...]:
        """The names of ``type_url``'s resources, sorted."""
        return tuple(self.of_type(type_url))


def encode(resource: Message) -> bytes:
    """``resource`` serialized deterministically: equal resources give equal bytes."""
    return resource.SerializeToString(deterministic=True)


def build_resources(
    snapshot: CatalogSnapshot, policy: PolicySettings, security: XdsSecurity | None = None
) -> ResourceSet:
    """The four resources of every service in ``snapshot`` (plaintext when ``security`` is None)."""
    built: dict[str, dict[str, Message]] = {type_url: {} for type_url in RESOURCE_TYPES}
    for name in sorted(snapshot.services):
        service = snapshot.services[name]
        service_policy = policy.service(name)
        built[LISTENER][name] = listener(name, service_policy)
        built[ROUTE_CONFIGURATION][name] = route_configuration(name, service_policy)
        built[CLUSTER][name] = cluster(service, service_policy, security)
        built[CLUSTER_LOAD_ASSIGNMENT][name] = load_assignment(service)
    return ResourceSet(
        MappingProxyType({type_url: MappingProxyType(by_name) for type_url, by_name in built.items()})
    )


def listener(name: str, service_policy: ServicePolicy) -> Message:
    """The client-side Listener ``name``: RDS over ADS, the fault filter (if any), the router."""
    filters = [policy_map.fault_filter(service_policy.fault)]
    router = http_connection_manager_pb2.HttpFilter(
        name=ROUTER_FILTER, typed_config=policy_map.pack(router_pb2.Router())
    )
    manager = http_connection_manager_pb2.HttpConnectionManager(
        stat_prefix=name,
        rds=http_connection_manager_pb2.Rds(config_source=_ads(), route_config_name=name),
        http_filters=[*(item for item in filters if item is not None), router],
    )
    api = api_listener_pb2.ApiListener(api_listener=policy_map.pack(manager))
    result: Message = listener_pb2.Listener(name=name, api_listener=api)
    return result


def route_configuration(name: str, service_policy: ServicePolicy) -> Message:
    """RouteConfiguration ``name``: a route per method the policy names, then the default."""
    methods = service_policy.methods
    full_paths = sorted(method for method in methods if method.startswith("/"))
    bare_names = sorted(method for method in methods if not method.startswith("/"))
    routes = [
        _route(method, route_components_pb2.RouteMatch(path=method), name, service_policy, methods[method])
        for method in full_paths
    ]
    routes += [
        _route(method, _bare_method_match(method), name, service_policy, methods[method])
        for method in bare_names
    ]
    routes.append(
        _route(
            DEFAULT_ROUTE,
            route_components_pb2.RouteMatch(prefix="/"),
            name,
            service_policy,
            service_policy.call,
        )
    )
    host = route_components_pb2.VirtualHost(name=name, domains=["*"], routes=routes)
    result: Message = route_pb2.RouteConfiguration(name=name, virtual_hosts=[host])
    return result


def _bare_method_match(method: str) -> Any:
    """A bare method name matches ``/<any service>/<method>``: the proto's package is unknown here."""
    regex = regex_pb2.RegexMatcher(regex=f"^/[^/]+/{re.escape(method)}$")
    return route_components_pb2.RouteMatch(safe_regex=regex)


def _route(label: str, match: Any, cluster_name: str, service_policy: ServicePolicy, call: CallPolicy) -> Any:
    action = route_components_pb2.RouteAction(
        cluster=cluster_name, hash_policy=policy_map.hash_policies(service_policy.balancer)
    )
    limit = policy_map.stream_duration(call)
    if limit is not None:
        action.max_stream_duration.CopyFrom(limit)
    retry = policy_map.retry_policy(call)
    if retry is not None:
        action.retry_policy.CopyFrom(retry)
    return route_components_pb2.Route(name=label, match=match, route=action)


def cluster(service: XdsService, service_policy: ServicePolicy, security: XdsSecurity | None) -> Message:
    """Cluster ``service.name``: endpoints by EDS over ADS, its balancer, outlier ejection, mTLS."""
    name = service.name
    built = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ads(), service_name=name),
        outlier_detection=policy_map.outlier_detection(),
    )
    policy_map.apply_balancer(built, service_policy.balancer)
    if security is not None:
        datacenters = (endpoint.datacenter for endpoint in service.endpoints)
        built.transport_socket.CopyFrom(_tls_socket(security, security.spiffe_ids(name, datacenters)))
    result: Message = built
    return result


def _tls_socket(security: XdsSecurity, sans: list[str]) -> Any:
    """mTLS (A29): the provider's certificate and CA, and only ``sans`` accepted as the server."""
    provider = common_pb2.CertificateProviderPluginInstance(instance_name=security.provider_instance)
    validation = common_pb2.CertificateValidationContext(
        ca_certificate_provider_instance=provider,
        # match_subject_alt_names, not match_typed_subject_alt_names: gRPC 1.85 ignores the latter.
        match_subject_alt_names=[string_pb2.StringMatcher(exact=san) for san in sans],
    )
    context = tls_pb2.CommonTlsContext(
        tls_certificate_provider_instance=provider, validation_context=validation
    )
    upstream = tls_pb2.UpstreamTlsContext(common_tls_context=context)
    return base_pb2.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=policy_map.pack(upstream))


def load_assignment(service: XdsService) -> Message:
    """ClusterLoadAssignment ``service.name``: instances by locality (region dc, zone node).

    Unhealthy instances are sent as UNHEALTHY (clients skip them; an operator reading the
    resource sees them). A locality's weight is its healthy instance count (at least 1: a
    locality without a weight is dropped by gRPC), so load spreads evenly per instance.
    Instances at an address gRPC cannot parse (not an IP literal) are left out, and one
    address:port is sent once (gRPC rejects the whole resource on a duplicate). A service
    with no usable instance gets no localities: its calls fail UNAVAILABLE at once.
    """
    localities: dict[tuple[str, str], list[XdsEndpoint]] = {}
    for endpoint in _usable(service.endpoints):
        localities.setdefault((endpoint.datacenter, endpoint.node), []).append(endpoint)
    groups = [
        endpoint_components_pb2.LocalityLbEndpoints(
            locality=base_pb2.Locality(region=region, zone=zone),
            load_balancing_weight=wrappers_pb2.UInt32Value(value=max(1, sum(e.healthy for e in members))),
            lb_endpoints=[_lb_endpoint(endpoint) for endpoint in members],
        )
        for (region, zone), members in sorted(localities.items())
    ]
    result: Message = endpoint_pb2.ClusterLoadAssignment(cluster_name=service.name, endpoints=groups)
    return result


def _usable(endpoints: Iterable[XdsEndpoint]) -> list[XdsEndpoint]:
    """Endpoints at IP literals, one per address:port (a healthy one if any), sorted."""
    chosen: dict[tuple[str, int], XdsEndpoint] = {}
    for endpoint in sorted(endpoints, key=lambda e: (not e.healthy, e.instance_id)):
        try:
            address = str(ipaddress.ip_address(endpoint.address))
        except ValueError:
            continue
        chosen.setdefault((address, endpoint.port), endpoint)
    return [chosen[key] for key in sorted(chosen)]


def _lb_endpoint(endpoint: XdsEndpoint) -> Any:
    status = health_check_pb2.HEALTHY if endpoint.healthy else health_check_pb2.UNHEALTHY
    socket = address_pb2.SocketAddress(address=endpoint.address, port_value=endpoint.port)
    return endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=address_pb2.Address(socket_address=socket)),
        health_status=status,
    )


def _ads() -> Any:
    """A ConfigSource that says "over the same ADS stream", in the v3 API."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )
