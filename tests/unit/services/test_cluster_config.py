"""What `make cluster` decides before any process starts: agent configuration, placement, settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.cluster.__main__ import main, settings_from_env
from services.cluster.consul import agent_config, node_policy_rules
from services.cluster.network import HostLink
from services.cluster.shop import ClusterSettings, ClusterShop
from services.topology import load_topology

ROOT = Path(__file__).resolve().parents[3]
SERVERS = [HostLink(f"consul{n}", f"ns{n}", f"10.213.37.1{n}", f"s{n}") for n in (1, 2, 3)]
APP = HostLink("app1", "ns-app1", "10.213.37.21", "s4")


def test_a_server_holds_the_master_token_and_a_client_does_not() -> None:
    server = agent_config(SERVERS[0], SERVERS, Path("/d"), server=True, master_token="m-1")
    client = agent_config(APP, SERVERS, Path("/d"), server=False, master_token="m-1")
    assert server["acl"]["tokens"] == {"master": "m-1"}
    assert "tokens" not in client["acl"]
    for config in (server, client):
        assert config["acl"]["default_policy"] == "deny"
        assert config["acl"]["down_policy"] == "extend-cache"  # a leaderless cluster keeps serving
        assert config["acl"]["enable_token_persistence"] is True  # a restarted agent keeps its token
    assert server["bootstrap_expect"] == 3 and server["retry_join"] == ["10.213.37.12", "10.213.37.13"]
    assert client["retry_join"] == [s.address for s in SERVERS] and "server" not in client


def test_without_a_master_token_acls_stay_off() -> None:
    assert "acl" not in agent_config(APP, SERVERS, Path("/d"), server=False)


def test_an_agent_may_write_only_its_own_node() -> None:
    rules = node_policy_rules("app2")
    assert 'node "app2" { policy = "write" }' in rules
    assert 'service_prefix "" { policy = "read" }' in rules
    assert "node_prefix" not in rules and "acl" not in rules


def shop_without_processes() -> ClusterShop:
    topology = load_topology(ROOT / "deploy" / "cluster.toml")
    return ClusterShop(topology, ClusterSettings(workdir=Path("/nonexistent"), consul_binary="consul"))


def test_a_new_instance_goes_to_the_app_host_running_fewest_of_that_service() -> None:
    shop = shop_without_processes()
    # deploy/cluster.toml: inventory on app1 and app2, payment on app2 and app3
    assert shop._app_hosts() == ["app1", "app2", "app3"]
    assert shop.least_loaded_host("inventory") == "app1"  # nothing placed yet: the first in file order

    class Running:
        def __init__(self, name: str, host: str) -> None:
            self.name, self.host = name, host

    shop.children = [Running("inventory", "app1"), Running("inventory", "app2")]  # type: ignore[list-item]
    assert shop.least_loaded_host("inventory") == "app3"


def test_settings_read_ports_and_database_prefix_from_the_environment() -> None:
    settings = settings_from_env(
        {
            "GATEWAY_PORT": "18080",
            "CONSUL_HTTP_ADDR": "127.0.0.1:18500",
            "CLUSTER_DATABASE_PREFIX": "t_x",
            "CLUSTER_FORWARD_PORTS": "4317, 9000",
        },
        mtls=True,
        child_env={"PYTHONPATH": str(ROOT)},
        consul_binary="/opt/consul",
    )
    assert (settings.gateway_root_port, settings.consul_root_port) == (18080, 18500)
    assert settings.database_prefix == "t_x" and settings.forwarded_ports == (4317, 9000)
    assert settings.workdir == ROOT / ".run" / "cluster"
    assert settings.consul_binary == "/opt/consul" and settings.child_env == {"PYTHONPATH": str(ROOT)}


def test_make_cluster_refuses_a_single_host_topology(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MESH_TOPOLOGY", "deploy/local.toml")
    assert main() == 1
    assert "deploy/local.toml is a single-host topology: `make run` runs it" in capsys.readouterr().err
