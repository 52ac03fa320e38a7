"""What runs where, as data: hosts, Consul servers, instances per service per host, the gateway's host.

The launcher used to hold the shop's layout in code (one loopback address, a Consul dev agent,
two inventory and two payment instances). A topology file says the same in TOML, so the
single-host ``make run`` (``deploy/local.toml``, :data:`DEFAULT_TOPOLOGY`) and a multi-host
shop (``deploy/cluster.toml``) are two files read by one launcher, not two code paths::

    [consul]
    mode = "dev"            # "dev": one dev agent on the only host; "cluster": servers on `servers`
    servers = []            # host names running Consul servers (cluster mode: 3 or 5)

    [hosts.local]
    address = "127.0.0.1"
    gateway = true          # exactly one host runs the gateway

    [services]
    user = { local = 1 }    # service -> { host name -> instances }
    ...

:func:`load_topology` checks everything it can before a single process starts: a wrong file
should fail at once with the file and the key to fix (``deploy/x.toml: services.order: host
'app9' is not under [hosts]``), not halfway through starting a cluster. The rules:

- only known keys, at the top and in every table (a typo must not be silently ignored);
- ``[apps.<name>]`` tables, the team's own services beside the shop, as
  :func:`services.topology_apps.load_apps` checks them (single-host dev mode only);
- at least one host, each with an IPv4 ``address``, no two hosts on one address (an address
  is where a host's instances bind and advertise: two hosts on one would collide);
- exactly one gateway host (the REST edge is one process with one forwarded port);
- every service of :data:`SERVICES` listed, no other, each count a non-negative int on a
  host under ``[hosts]``, and at least one instance in all (the shop needs every service);
- ``consul.mode`` "dev" (one dev agent: only on a single host, no servers listed) or
  "cluster" (3 or 5 servers, the sizes that tolerate one or two lost servers without an even
  split, each a host under ``[hosts]``); in cluster mode every address is RFC 1918 private
  and all share one /24, the subnet of the bridge the hosts are wired to.

The result is a frozen :class:`Topology` with read-only mappings: the launcher and the
supervisor share it across threads, and a change (``mesh scale``) is a new value from
:meth:`Topology.with_count`, never an edit in place.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, cast

from services.topology_apps import App, AppError, load_apps

ROOT = Path(__file__).resolve().parent.parent

SERVICES = ("user", "inventory", "payment", "shipping", "order")
"""Every service of the shop, in start order (services/launcher.py START_ORDER): order, which
calls the other four, comes last."""

DEFAULT_TOPOLOGY = ROOT / "deploy" / "local.toml"
"""What ``make run`` runs: today's single-host shop."""

ConsulMode = Literal["dev", "cluster"]
CONSUL_MODES: tuple[ConsulMode, ...] = ("dev", "cluster")
CLUSTER_SERVER_COUNTS = (3, 5)
"""Raft needs a majority: 3 servers survive losing 1, 5 survive losing 2; an even count adds a
server without adding tolerance."""

TOP_LEVEL_KEYS = frozenset({"consul", "hosts", "services", "apps"})
CONSUL_KEYS = frozenset({"mode", "servers"})
HOST_KEYS = frozenset({"address", "gateway"})

HOST_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
"""Lower-case words joined by hyphens: a host name becomes part of process, log and network
namespace names, where spaces, dots or upper case would need quoting or be refused."""

PRIVATE_NETWORKS = tuple(
    ipaddress.IPv4Network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
)
"""RFC 1918: a cluster's subnet exists only inside the project's namespaces, so it must be one
no public host uses (loopback is refused too: it never leaves a namespace)."""

CLUSTER_PREFIX = 24
"""Cluster hosts are wired to one bridge: one /24 holds them all."""


class TopologyError(ValueError):
    """A topology file that cannot be run; the message names the file and the offending key."""


@dataclass(frozen=True)
class Host:
    """One host: where its instances bind and advertise, and whether it runs the gateway."""

    name: str
    address: str
    """An IPv4 address, as written in the file."""
    gateway: bool = False


@dataclass(frozen=True)
class Topology:
    """A checked topology file (build one with :func:`load_topology`)."""

    path: Path
    hosts: tuple[Host, ...]
    """In file order: placements and start order follow it, so a layout reads as it runs."""
    consul_mode: ConsulMode
    consul_servers: tuple[str, ...]
    """Names of the hosts running Consul servers (empty in dev mode)."""
    instances: Mapping[str, Mapping[str, int]]
    """Service -> host name -> count, services in :data:`SERVICES` order, hosts in file order."""
    apps: tuple[App, ...] = ()
    """The team's own services run beside the shop (``[apps.<name>]``, services/topology_apps.py)."""

    def host(self, name: str) -> Host:
        """The host called ``name``; TopologyError when there is none."""
        for host in self.hosts:
            if host.name == name:
                return host
        raise TopologyError(f"{_shown(self.path)}: hosts: no host {name!r}")

    @property
    def gateway_host(self) -> Host:
        """The one host that runs the gateway (load_topology checked there is exactly one)."""
        return next(host for host in self.hosts if host.gateway)

    @property
    def single_host(self) -> bool:
        """Everything on one host: today's ``make run``, and the only layout ``with_count`` edits."""
        return len(self.hosts) == 1

    def count(self, service: str) -> int:
        """Total instances of ``service`` across hosts."""
        return sum(self._placement(service).values())

    def placements(self, service: str) -> tuple[Host, ...]:
        """One entry per instance of ``service`` (a host twice for two instances), hosts in file order."""
        placement = self._placement(service)
        return tuple(host for host in self.hosts for _ in range(placement.get(host.name, 0)))

    def with_count(self, service: str, count: int) -> Topology:
        """The same topology with ``count`` instances of ``service`` on the only host (``mesh scale``).

        Only a single-host topology has an obvious answer to "where do the new instances go";
        across hosts that is a placement decision for the file. ``count`` may be 0 (a service
        scaled to nothing is still a service the operator can scale back up).
        """
        self._placement(service)
        where = f"{_shown(self.path)}: services.{service}"
        if not self.single_host:
            raise TopologyError(f"{where}: scaling by count needs a single-host topology; edit the file")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise TopologyError(f"{where}: instance count must be a non-negative int, not {count!r}")
        instances = dict(self.instances)
        instances[service] = MappingProxyType({self.hosts[0].name: count})
        return replace(self, instances=MappingProxyType(instances))

    def _placement(self, service: str) -> Mapping[str, int]:
        try:
            return self.instances[service]
        except KeyError:
            raise TopologyError(f"{_shown(self.path)}: services: unknown service {service!r}") from None


def load_topology(path: Path) -> Topology:
    """Read and check a topology file; TopologyError naming the file and key on any fault."""
    shown = _shown(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise TopologyError(f"{shown}: cannot read: {error.strerror or error}") from error
    except tomllib.TOMLDecodeError as error:
        raise TopologyError(f"{shown}: not valid TOML: {error}") from error
    _known_keys(shown, "", data, TOP_LEVEL_KEYS)
    hosts = _hosts(shown, _table(shown, "hosts", data))
    instances = _instances(shown, _table(shown, "services", data), hosts)
    mode, servers = _consul(shown, _table(shown, "consul", data), hosts)
    try:
        apps = load_apps(data.get("apps", {}), path.parent, SERVICES)
    except AppError as error:
        raise TopologyError(f"{shown}: {error}") from None
    if apps and mode != "dev":
        raise TopologyError(f'{shown}: apps: apps run under `make run` (consul.mode = "dev") only')
    return Topology(
        path=path,
        hosts=hosts,
        consul_mode=mode,
        consul_servers=servers,
        instances=instances,
        apps=apps,
    )


def _hosts(shown: str, table: dict[str, Any]) -> tuple[Host, ...]:
    if not table:
        raise TopologyError(f"{shown}: hosts: no hosts; add a [hosts.<name>] table")
    hosts: list[Host] = []
    seen: dict[str, str] = {}
    for name, entry in table.items():
        key = f"hosts.{name}"
        if not HOST_NAME.fullmatch(name):
            raise TopologyError(f"{shown}: {key}: a host name is lower-case words joined by hyphens")
        if not isinstance(entry, dict):
            raise TopologyError(f"{shown}: {key}: must be a table with an address")
        _known_keys(shown, f"{key}.", entry, HOST_KEYS)
        address = entry.get("address")
        if address is None:
            raise TopologyError(f"{shown}: {key}.address: missing")
        try:
            parsed = ipaddress.IPv4Address(address) if isinstance(address, str) else None
        except ValueError:
            parsed = None
        if parsed is None:
            raise TopologyError(f"{shown}: {key}.address: {address!r} is not an IPv4 address")
        if str(parsed) in seen:
            raise TopologyError(
                f"{shown}: {key}.address: {address} is already the address of host {seen[str(parsed)]!r}"
            )
        seen[str(parsed)] = name
        gateway = entry.get("gateway", False)
        if not isinstance(gateway, bool):
            raise TopologyError(f"{shown}: {key}.gateway: must be true or false, not {gateway!r}")
        if gateway and any(host.gateway for host in hosts):
            first = next(host.name for host in hosts if host.gateway)
            raise TopologyError(
                f"{shown}: {key}.gateway: hosts.{first} already runs the gateway; exactly one host does"
            )
        hosts.append(Host(name=name, address=address, gateway=gateway))
    if not any(host.gateway for host in hosts):
        raise TopologyError(f"{shown}: hosts: no host has gateway = true; exactly one host runs the gateway")
    return tuple(hosts)


def _instances(shown: str, table: dict[str, Any], hosts: tuple[Host, ...]) -> Mapping[str, Mapping[str, int]]:
    names = [host.name for host in hosts]
    for service in table:
        if service not in SERVICES:
            raise TopologyError(
                f"{shown}: services.{service}: unknown service (the shop's: {', '.join(SERVICES)})"
            )
    instances: dict[str, Mapping[str, int]] = {}
    for service in SERVICES:
        key = f"services.{service}"
        if service not in table:
            raise TopologyError(f"{shown}: {key}: missing; every service needs a placement")
        per_host = table[service]
        if not isinstance(per_host, dict):
            raise TopologyError(f"{shown}: {key}: must be a table of host = count")
        for host_name, count in per_host.items():
            if host_name not in names:
                raise TopologyError(f"{shown}: {key}: host {host_name!r} is not under [hosts]")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise TopologyError(
                    f"{shown}: {key}.{host_name}: instance count must be a non-negative int, not {count!r}"
                )
        if sum(per_host.values()) == 0:
            raise TopologyError(f"{shown}: {key}: no instances; the shop needs at least one")
        ordered = {name: per_host[name] for name in names if name in per_host}
        instances[service] = MappingProxyType(ordered)
    return MappingProxyType(instances)


def _consul(shown: str, table: dict[str, Any], hosts: tuple[Host, ...]) -> tuple[ConsulMode, tuple[str, ...]]:
    _known_keys(shown, "consul.", table, CONSUL_KEYS)
    mode = table.get("mode")
    if mode not in CONSUL_MODES:
        raise TopologyError(f'{shown}: consul.mode: must be "dev" or "cluster", not {mode!r}')
    servers = table.get("servers", [])
    if not isinstance(servers, list) or not all(isinstance(name, str) for name in servers):
        raise TopologyError(f"{shown}: consul.servers: must be a list of host names")
    if mode == "dev":
        if len(hosts) != 1:
            raise TopologyError(
                f'{shown}: consul.mode: a dev agent serves one host; {len(hosts)} hosts need "cluster"'
            )
        if servers:
            raise TopologyError(f"{shown}: consul.servers: dev mode runs no servers; leave it empty")
        return "dev", ()
    if len(servers) not in CLUSTER_SERVER_COUNTS:
        raise TopologyError(f"{shown}: consul.servers: cluster mode needs 3 or 5 servers, not {len(servers)}")
    names = {host.name for host in hosts}
    for name in servers:
        if name not in names:
            raise TopologyError(f"{shown}: consul.servers: host {name!r} is not under [hosts]")
    twice = sorted({name for name in servers if servers.count(name) > 1})
    if twice:
        raise TopologyError(f"{shown}: consul.servers: host {twice[0]!r} is listed twice")
    _one_private_subnet(shown, hosts)
    return "cluster", tuple(servers)


def _one_private_subnet(shown: str, hosts: tuple[Host, ...]) -> None:
    """Cluster hosts sit on one bridge in a subnet only the project's namespaces see."""
    first = hosts[0]
    subnet = ipaddress.IPv4Interface(f"{first.address}/{CLUSTER_PREFIX}").network
    for host in hosts:
        key = f"hosts.{host.name}.address"
        address = ipaddress.IPv4Address(host.address)
        if not any(address in network for network in PRIVATE_NETWORKS):
            raise TopologyError(
                f"{shown}: {key}: cluster mode needs a private (RFC 1918) address, not {host.address}"
            )
        if address not in subnet:
            raise TopologyError(
                f"{shown}: {key}: {host.address} is outside {subnet} (the /24 of host {first.name!r}); "
                "cluster hosts share one subnet"
            )
        if address in (subnet.network_address, subnet.broadcast_address):
            raise TopologyError(f"{shown}: {key}: {host.address} is {subnet}'s network or broadcast address")


def _table(shown: str, key: str, data: dict[str, Any]) -> dict[str, Any]:
    if key not in data:
        raise TopologyError(f"{shown}: {key}: missing; add a [{key}] table")
    value = data[key]
    if not isinstance(value, dict):
        raise TopologyError(f"{shown}: {key}: must be a table")
    return cast(dict[str, Any], value)


def _known_keys(shown: str, prefix: str, table: dict[str, Any], known: frozenset[str]) -> None:
    for key in table:
        if key not in known:
            raise TopologyError(f"{shown}: {prefix}{key}: unknown key (known: {', '.join(sorted(known))})")


def _shown(path: Path) -> str:
    """The path as a person would type it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
