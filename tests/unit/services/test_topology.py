"""The topology file: the shipped layouts say what they should, and every broken file is refused.

A wrong topology must fail before a process starts, with the file and the key to fix in the
message: each rule is tried on a small file that breaks only it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from services import mesh_policy
from services.topology import (
    DEFAULT_TOPOLOGY,
    SERVICES,
    Host,
    Topology,
    TopologyError,
    load_topology,
)
from tests.support.topologies import single_host

ROOT = Path(__file__).resolve().parents[3]

LOCAL = single_host(inventory=2, payment=2)  # deploy/local.toml's layout

CLUSTER = """\
[consul]
mode = "cluster"
servers = ["consul1", "consul2", "consul3"]

[hosts.consul1]
address = "10.9.8.11"

[hosts.consul2]
address = "10.9.8.12"

[hosts.consul3]
address = "10.9.8.13"

[hosts.app1]
address = "10.9.8.21"

[hosts.edge]
address = "10.9.8.31"
gateway = true

[services]
user = { app1 = 1 }
inventory = { app1 = 2 }
payment = { app1 = 1 }
shipping = { app1 = 1 }
order = { app1 = 1 }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.toml"
    path.write_text(text)
    return path


def edited(base: str, old: str, new: str) -> str:
    assert old in base, f"the test's edit does not apply: {old!r}"
    return base.replace(old, new, 1)


def test_the_small_files_the_refusals_start_from_load(tmp_path: Path) -> None:
    assert load_topology(write(tmp_path, LOCAL)).single_host
    assert load_topology(write(tmp_path, CLUSTER)).consul_mode == "cluster"


# --- the shipped files ---------------------------------------------------------------------


def test_the_default_topology_is_the_shipped_local_file() -> None:
    assert DEFAULT_TOPOLOGY == ROOT / "deploy" / "local.toml"
    assert DEFAULT_TOPOLOGY.is_file()


def test_services_are_the_shops_in_start_order() -> None:
    assert set(SERVICES) == set(mesh_policy.SERVICES)
    assert SERVICES[-1] == "order"  # it calls the other four


def test_local_is_todays_single_host_shop() -> None:
    topology = load_topology(DEFAULT_TOPOLOGY)
    assert topology.single_host
    assert topology.consul_mode == "dev"
    assert topology.consul_servers == ()
    assert topology.hosts == (Host("local", "127.0.0.1", gateway=True),)
    assert topology.gateway_host.name == "local"
    assert {service: topology.count(service) for service in SERVICES} == {
        "user": 1,
        "inventory": 2,
        "payment": 2,
        "shipping": 1,
        "order": 1,
    }
    local = topology.host("local")
    assert topology.placements("inventory") == (local, local)
    assert topology.placements("order") == (local,)
    assert list(topology.instances) == list(SERVICES)


def test_cluster_spreads_the_shop_over_hosts_with_three_consul_servers() -> None:
    topology = load_topology(ROOT / "deploy" / "cluster.toml")
    assert not topology.single_host
    assert topology.consul_mode == "cluster"
    assert topology.consul_servers == ("consul1", "consul2", "consul3")
    assert topology.gateway_host.name == "edge"
    assert [host.name for host in topology.hosts] == [
        "consul1",
        "consul2",
        "consul3",
        "app1",
        "app2",
        "app3",
        "edge",
    ]
    assert len({host.address for host in topology.hosts}) == len(topology.hosts)
    assert all(host.address.startswith("10.213.37.") for host in topology.hosts)

    def names(service: str) -> list[str]:
        return [host.name for host in topology.placements(service)]

    assert names("user") == ["app1"]
    assert names("inventory") == ["app1", "app2"]
    assert names("payment") == ["app2", "app3"]
    assert names("shipping") == ["app3"]
    assert names("order") == ["app1", "app2"]  # two hosts, one shared database, leases pass
    servers_run_no_services = {name for service in SERVICES for name in names(service)}
    assert servers_run_no_services.isdisjoint(topology.consul_servers)
    assert "edge" not in servers_run_no_services


def test_placements_follow_the_hosts_file_order_not_the_services_table(tmp_path: Path) -> None:
    text = edited(CLUSTER, "inventory = { app1 = 2 }", "inventory = { edge = 1, app1 = 2 }")
    topology = load_topology(write(tmp_path, text))
    assert [host.name for host in topology.placements("inventory")] == ["app1", "app1", "edge"]
    assert list(topology.instances["inventory"]) == ["app1", "edge"]


def test_a_topology_is_read_only() -> None:
    topology = load_topology(DEFAULT_TOPOLOGY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        topology.consul_mode = "cluster"  # type: ignore[misc]
    with pytest.raises(TypeError):
        topology.instances["order"] = {"local": 3}  # type: ignore[index]
    with pytest.raises(TypeError):
        topology.instances["order"]["local"] = 3  # type: ignore[index]


def test_lookups_of_what_is_not_there_name_the_file() -> None:
    topology = load_topology(DEFAULT_TOPOLOGY)
    with pytest.raises(TopologyError, match=r"^deploy/local\.toml: hosts: no host 'app9'"):
        topology.host("app9")
    with pytest.raises(TopologyError, match=r"^deploy/local\.toml: services: unknown service 'billing'"):
        topology.count("billing")
    with pytest.raises(TopologyError, match="unknown service 'billing'"):
        topology.placements("billing")


# --- refusals ------------------------------------------------------------------------------

REFUSALS = [
    # unknown keys
    pytest.param(LOCAL + "\n[extra]\nx = 1\n", "extra: unknown key", id="top-level-key"),
    pytest.param(
        edited(LOCAL, "servers = []", 'servers = []\nleader = "local"'),
        "consul.leader: unknown key",
        id="consul-key",
    ),
    pytest.param(
        edited(LOCAL, "gateway = true", "gateway = true\nport = 80"),
        "hosts.local.port: unknown key",
        id="host-key",
    ),
    # tables
    pytest.param(
        edited(LOCAL, '[consul]\nmode = "dev"\nservers = []\n', ""), "consul: missing", id="no-consul"
    ),
    pytest.param(
        edited(LOCAL, '[hosts.local]\naddress = "127.0.0.1"\ngateway = true\n', ""),
        "hosts: missing",
        id="no-hosts-table",
    ),
    pytest.param(
        edited(LOCAL, '[hosts.local]\naddress = "127.0.0.1"\ngateway = true\n', "[hosts]\n"),
        "hosts: no hosts",
        id="no-hosts",
    ),
    pytest.param(LOCAL.split("[services]")[0], "services: missing", id="no-services"),
    # hosts
    pytest.param(
        edited(LOCAL, "[hosts.local]", '[hosts."app 1"]'), "hosts.app 1: a host name", id="host-name"
    ),
    pytest.param(
        edited(LOCAL, 'address = "127.0.0.1"\n', ""), "hosts.local.address: missing", id="no-address"
    ),
    pytest.param(
        edited(LOCAL, '"127.0.0.1"', '"127.0.0.300"'),
        "hosts.local.address: '127.0.0.300' is not an IPv4 address",
        id="bad-address",
    ),
    pytest.param(
        edited(LOCAL, '"127.0.0.1"', '"::1"'), "hosts.local.address: '::1' is not an IPv4", id="ipv6-address"
    ),
    pytest.param(
        edited(LOCAL, '"127.0.0.1"', "2130706433"), "hosts.local.address: 2130706433", id="int-address"
    ),
    pytest.param(
        edited(CLUSTER, '"10.9.8.31"', '"10.9.8.21"'),
        "hosts.edge.address: 10.9.8.21 is already the address of host 'app1'",
        id="same-address",
    ),
    pytest.param(
        edited(LOCAL, "gateway = true", "gateway = false"), "hosts: no host has gateway", id="no-gateway"
    ),
    pytest.param(edited(LOCAL, "gateway = true", ""), "hosts: no host has gateway", id="gateway-left-out"),
    pytest.param(
        edited(CLUSTER, '"10.9.8.21"', '"10.9.8.21"\ngateway = true'),
        "hosts.edge.gateway: hosts.app1 already runs the gateway",
        id="two-gateways",
    ),
    pytest.param(
        edited(LOCAL, "gateway = true", 'gateway = "yes"'),
        "hosts.local.gateway: must be true or false",
        id="gateway-not-bool",
    ),
    # services
    pytest.param(
        edited(LOCAL, "shipping = { local = 1 }\n", ""), "services.shipping: missing", id="missing-service"
    ),
    pytest.param(
        LOCAL + "billing = { local = 1 }\n", "services.billing: unknown service", id="unknown-service"
    ),
    pytest.param(
        edited(LOCAL, "order = { local = 1 }", "order = { local = 1.5 }"),
        "services.order.local: instance count must be a non-negative int, not 1.5",
        id="float-count",
    ),
    pytest.param(
        edited(LOCAL, "order = { local = 1 }", "order = { local = -1 }"),
        "services.order.local: instance count must be a non-negative int, not -1",
        id="negative-count",
    ),
    pytest.param(
        edited(LOCAL, "order = { local = 1 }", "order = { local = true }"),
        "services.order.local: instance count must be a non-negative int, not True",
        id="bool-count",
    ),
    pytest.param(
        edited(LOCAL, "order = { local = 1 }", 'order = { local = "2" }'),
        "services.order.local: instance count must be a non-negative int, not '2'",
        id="string-count",
    ),
    pytest.param(
        edited(LOCAL, "order = { local = 1 }", "order = { app9 = 1 }"),
        "services.order: host 'app9' is not under [hosts]",
        id="unknown-host",
    ),
    pytest.param(
        edited(LOCAL, "order = { local = 1 }", "order = { local = 0 }"),
        "services.order: no instances",
        id="zero-instances",
    ),
    pytest.param(
        edited(LOCAL, "order = { local = 1 }", "order = {}"), "services.order: no instances", id="empty"
    ),
    pytest.param(
        edited(LOCAL, "order = { local = 1 }", "order = 1"),
        "services.order: must be a table",
        id="not-a-table",
    ),
    # consul
    pytest.param(
        edited(LOCAL, 'mode = "dev"', 'mode = "server"'),
        'consul.mode: must be "dev" or "cluster", not \'server\'',
        id="bad-mode",
    ),
    pytest.param(edited(LOCAL, 'mode = "dev"\n', ""), "consul.mode: must be", id="no-mode"),
    pytest.param(
        edited(LOCAL, "servers = []", 'servers = ["local"]'),
        "consul.servers: dev mode runs no servers",
        id="dev-servers",
    ),
    pytest.param(
        edited(LOCAL, "servers = []", 'servers = "local"'),
        "consul.servers: must be a list",
        id="servers-not-list",
    ),
    pytest.param(
        edited(CLUSTER, 'mode = "cluster"', 'mode = "dev"'),
        "consul.mode: a dev agent serves one host; 5 hosts",
        id="dev-many-hosts",
    ),
    pytest.param(
        edited(CLUSTER, '["consul1", "consul2", "consul3"]', '["consul1", "consul2"]'),
        "consul.servers: cluster mode needs 3 or 5 servers, not 2",
        id="two-servers",
    ),
    pytest.param(
        edited(CLUSTER, '["consul1", "consul2", "consul3"]', '["consul1", "consul2", "consul3", "app1"]'),
        "consul.servers: cluster mode needs 3 or 5 servers, not 4",
        id="four-servers",
    ),
    pytest.param(
        edited(CLUSTER, '"consul3"]', '"consul9"]'),
        "consul.servers: host 'consul9' is not under [hosts]",
        id="unknown-server",
    ),
    pytest.param(
        edited(CLUSTER, '"consul3"]', '"consul2"]'),
        "consul.servers: host 'consul2' is listed twice",
        id="server-twice",
    ),
    pytest.param(
        CLUSTER.replace('"10.9.8.', '"127.0.0.'),
        "hosts.consul1.address: cluster mode needs a private (RFC 1918) address, not 127.0.0.11",
        id="cluster-loopback",
    ),
    pytest.param(
        CLUSTER.replace('"10.9.8.', '"8.8.8.'),
        "hosts.consul1.address: cluster mode needs a private",
        id="cluster-public",
    ),
    pytest.param(
        edited(CLUSTER, '"10.9.8.31"', '"10.9.9.31"'),
        "hosts.edge.address: 10.9.9.31 is outside 10.9.8.0/24",
        id="two-subnets",
    ),
    pytest.param(
        edited(CLUSTER, '"10.9.8.31"', '"10.9.8.255"'),
        "hosts.edge.address: 10.9.8.255 is 10.9.8.0/24's network or broadcast",
        id="broadcast-address",
    ),
    # the file itself
    pytest.param("[consul\n", "not valid TOML", id="not-toml"),
]


@pytest.mark.parametrize(("text", "message"), REFUSALS)
def test_a_broken_file_is_refused_naming_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(TopologyError) as raised:
        load_topology(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"nowhere\.toml: cannot read"):
        load_topology(tmp_path / "nowhere.toml")


def test_a_topology_error_is_a_value_error() -> None:
    assert issubclass(TopologyError, ValueError)


def test_five_servers_and_zero_instances_on_one_host_are_accepted(tmp_path: Path) -> None:
    text = edited(
        CLUSTER, '["consul1", "consul2", "consul3"]', '["consul1", "consul2", "consul3", "app1", "edge"]'
    )
    text = edited(text, "order = { app1 = 1 }", "order = { app1 = 1, edge = 0 }")
    topology = load_topology(write(tmp_path, text))
    assert len(topology.consul_servers) == 5
    assert topology.count("order") == 1
    assert [host.name for host in topology.placements("order")] == ["app1"]


# --- with_count ----------------------------------------------------------------------------


def test_with_count_scales_up_and_down_on_the_only_host() -> None:
    topology = load_topology(DEFAULT_TOPOLOGY)
    up = topology.with_count("inventory", 4)
    assert up.count("inventory") == 4
    assert up.placements("inventory") == (topology.host("local"),) * 4
    assert topology.count("inventory") == 2  # a new value; the original is unchanged
    down = up.with_count("inventory", 1)
    assert down.count("inventory") == 1
    none = down.with_count("inventory", 0)
    assert none.count("inventory") == 0
    assert none.placements("inventory") == ()
    for other in ("user", "payment", "shipping", "order"):
        assert none.count(other) == topology.count(other)
    assert list(none.instances) == list(SERVICES)
    assert dataclasses.replace(none, instances=topology.instances) == topology


def test_with_count_returns_read_only_mappings() -> None:
    scaled = load_topology(DEFAULT_TOPOLOGY).with_count("order", 2)
    assert isinstance(scaled, Topology)
    with pytest.raises(TypeError):
        scaled.instances["order"]["local"] = 3  # type: ignore[index]


@pytest.mark.parametrize(
    ("service", "count", "message"),
    [
        ("order", -1, "services.order: instance count must be a non-negative int, not -1"),
        ("order", True, "services.order: instance count must be a non-negative int, not True"),
        ("order", 1.0, "services.order: instance count must be a non-negative int, not 1.0"),
        ("billing", 1, "services: unknown service 'billing'"),
    ],
)
def test_with_count_refuses_what_is_not_a_count_of_a_service(service: str, count: int, message: str) -> None:
    with pytest.raises(TopologyError) as raised:
        load_topology(DEFAULT_TOPOLOGY).with_count(service, count)
    assert str(raised.value) == f"deploy/local.toml: {message}"


def test_with_count_refuses_a_multi_host_topology() -> None:
    topology = load_topology(ROOT / "deploy" / "cluster.toml")
    with pytest.raises(TopologyError, match=r"^deploy/cluster\.toml: services\.order: .*single-host"):
        topology.with_count("order", 3)
