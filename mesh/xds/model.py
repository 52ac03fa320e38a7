"""What the control plane knows about the catalog, as plain values.

Why a model of its own: the Consul side (``catalog.py``) and the xDS side (``resources.py``)
meet here and nowhere else, so the resource builder is a pure function of a snapshot and a
policy, testable without Consul, and the Consul follower knows nothing of Envoy's protos.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_CONFIGURATION = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
CLUSTER_LOAD_ASSIGNMENT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
RESOURCE_TYPES = (LISTENER, ROUTE_CONFIGURATION, CLUSTER, CLUSTER_LOAD_ASSIGNMENT)


@dataclass(frozen=True)
class XdsEndpoint:
    """One instance of a service as Consul's health endpoint reports it."""

    instance_id: str
    address: str
    port: int
    node: str  # the Consul node (the host) the instance registered with: its locality's zone
    datacenter: str  # the Consul datacenter: its locality's region
    healthy: bool  # every check passing ("warning" and "critical" are not)


@dataclass(frozen=True)
class XdsService:
    """One service name and all its registered instances, healthy or not."""

    name: str
    endpoints: tuple[XdsEndpoint, ...]


@dataclass(frozen=True)
class CatalogSnapshot:
    """Every service Consul has answered for at least once, by name.

    A name appears only after its first health answer: a client asking for a service the
    control plane has not heard of yet gets nothing rather than an empty endpoint set.
    """

    services: Mapping[str, XdsService] = field(default_factory=lambda: MappingProxyType({}))
