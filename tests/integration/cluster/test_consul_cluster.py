"""A real 3-server Consul cluster across namespace hosts: a leader, a lost leader, a lost host.

Three server hosts and two app hosts, each app host with its own client agent (Consul
1.8.7, ``raft_multiplier = 1``, joining every second). Printed with ``pytest -s``: how long the
first election, the new leader and the partition's detection took.
"""

from __future__ import annotations

import signal

import pytest

from services.cluster.consul import ConsulCluster
from services.cluster.network import Network
from tests.integration.cluster.conftest import HOSTS, SERVERS
from tests.support.waiting import wait_until_blocking

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]

NEW_LEADER_WITHIN = 5.0  # the bound for a SIGKILLed leader's replacement
POLL = 0.05  # seconds between probes of the agents' HTTP API


def serf_health(cluster: ConsulCluster, asked: str, node: str) -> str:
    checks = cluster.get(asked, f"/v1/health/node/{node}")
    return next((c["Status"] for c in checks if c["CheckID"] == "serfHealth"), "")


def test_the_servers_elect_a_leader_and_a_killed_leader_is_replaced_within_five_seconds(
    cluster: ConsulCluster,
) -> None:
    every = [name for name, _ in HOSTS]
    leader, first = cluster.wait_leader(every, within=60)
    assert leader in SERVERS
    members = cluster.get("app2", "/v1/agent/members")
    assert sorted((m["Name"], m["Status"]) for m in members) == sorted((n, 1) for n in every)  # 1: alive

    cluster.agents[leader].signal(signal.SIGKILL)
    survivors = [n for n in every if n != leader]
    new_leader, replaced = cluster.wait_leader(survivors, within=30, not_host=leader)
    print(f"\nfirst leader after {first:.2f} s; {leader} killed, {new_leader} leads after {replaced:.2f} s")
    assert new_leader in SERVERS and new_leader != leader
    assert replaced < NEW_LEADER_WITHIN, replaced

    # The cluster still takes writes: an instance registers with its own host's agent after,
    # and the other host's agent sees it in the catalog.
    cluster.put("app1", "/v1/agent/service/register", {"Name": "probe", "ID": "probe-1", "Port": 7000})
    wait_until_blocking(
        lambda: bool(cluster.get("app2", "/v1/catalog/service/probe")), 10, "registered after", step=POLL
    )
    (row,) = cluster.get("app2", "/v1/catalog/service/probe")
    assert row["Node"] == "app1" and row["Address"] == cluster.network.hosts["app1"].address


def test_a_partitioned_host_turns_critical_for_the_others_and_passing_after_healing(
    cluster: ConsulCluster, hosts: Network
) -> None:
    cluster.wait_leader([name for name, _ in HOSTS], within=60)
    wait_until_blocking(
        lambda: serf_health(cluster, "app1", "app2") == "passing", 30, "app2 passing", step=POLL
    )
    hosts.partition("app2")
    cut = wait_until_blocking(
        lambda: serf_health(cluster, "app1", "app2") == "critical", 30, "app2 critical", step=POLL
    )
    hosts.heal("app2")
    # Serf retries a failed member every 30 s (its reconnect interval, not configurable in
    # Consul 1.8) and merges full state by push-pull on a like period: a heal can take up to
    # about two such periods to be seen (CI once took over 30 s; bench/cluster.py's trials
    # range from 2 to 25 s). The shop's own heal test allows 60 s for the same reason.
    healed = wait_until_blocking(
        lambda: serf_health(cluster, "app1", "app2") == "passing", 70, "app2 passing again", step=POLL
    )
    print(f"\npartitioned app2 critical after {cut:.2f} s, passing {healed:.2f} s after healing")
