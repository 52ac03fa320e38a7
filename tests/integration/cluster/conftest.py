"""Hosts as network namespaces for the cluster tests; what a crashed run left is swept first."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mesh.registry.dev_agent import find_consul
from services.cluster.consul import ConsulCluster
from services.cluster.network import Network, network, sweep
from tests.support.processes import ROOT, free_port

SUBNET = "10.213.37.0/24"
SERVERS = ("consul1", "consul2", "consul3")
APPS = ("app1", "app2")
HOSTS = [(name, f"10.213.37.{11 + n}") for n, name in enumerate(SERVERS)] + [
    (name, f"10.213.37.{21 + n}") for n, name in enumerate(APPS)
]


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Network]:
    sweep()  # namespaces of runs whose owner died (a crashed test run): ours by name, gone now
    with network(SUBNET, HOSTS, tmp_path) as made:
        yield made


@pytest.fixture
def cluster(hosts: Network, tmp_path: Path) -> Iterator[ConsulCluster]:
    made = ConsulCluster(hosts, SERVERS, APPS, tmp_path / "consul", find_consul(ROOT))
    try:
        yield made.start({name: free_port() for name, _ in HOSTS})
    finally:
        made.stop()
