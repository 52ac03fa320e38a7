"""``make cluster`` under faults: the whole shop across namespace hosts, driven as a real run.

One run of ``python -m services.cluster`` (deploy/cluster.toml: three Consul servers, app1..app3
with client agents, the gateway on edge) serves every test here, in file order; each test
leaves the cluster whole again, except the last, which loses a host for good. Clients call
through the gateway the whole time (idempotent reads; keyed orders in the last test) and every
answer is counted: no fault here may fail one of them. Printed with ``pytest -s``: how long
each detection and recovery took.

app2 is the host the faults hit: it runs an instance of inventory, payment and order, each
with a twin on another host, so losing it leaves every service served.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from services.cluster.handle import ClusterProcess
from services.cluster.network import namespaces, sweep
from tests.conftest import POSTGRES_ADMIN_DSN
from tests.support.bus import Bus
from tests.support.gateway_load import Load, gateway_call
from tests.support.invariants import ShopDatabases, violations
from tests.support.processes import ROOT, free_port
from tests.support.saga_shop import SAGA_ENV
from tests.support.tokens import KeyPair
from tests.support.waiting import wait_until_blocking

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]

APP2 = "10.213.37.22"
ON_APP2 = ("inventory", "payment", "order")
NEW_LEADER_WITHIN = 5.0
POLL = 0.05


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, jwt_keys: KeyPair) -> Iterator[ClusterProcess]:
    sweep()
    root = tmp_path_factory.mktemp("cluster-shop")
    prefix = f"t_cluster_{uuid.uuid4().hex[:10]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_HTTP_TOKEN")}
    env.update(SAGA_ENV)
    env.update(
        MESH_CLUSTER_DIR=str(root / "run"),
        MESH_CLUSTER_STATE=str(root / "state.json"),
        MESH_CONTROL_FILE=str(root / "control.json"),
        GATEWAY_PORT=str(free_port()),
        CONSUL_HTTP_ADDR=f"127.0.0.1:{free_port()}",
        CLUSTER_POSTGRES_DSN=POSTGRES_ADMIN_DSN,
        CLUSTER_DATABASE_PREFIX=prefix,
        SHOP_EVENTS_NAMESPACE=prefix,
        GATEWAY_RATE_LIMIT_PER_SECOND="0",
        MESH_JWT_PRIVATE_KEY_FILE=str(jwt_keys.private),
        MESH_JWT_PUBLIC_KEY_FILE=str(jwt_keys.public),
    )
    run = ClusterProcess(env=env)
    try:
        yield run.start()
    finally:
        code = run.stop()
        owner = run.state.get("owner")
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            for database in run.state.get("databases", {}).values():
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        Bus(prefix).delete()  # the shop's exchange and queues on the machine's broker
        print(f"\nmake cluster exited with {code}")
    assert code == 0, run.output()
    assert [n for n in namespaces() if n.startswith(f"tsu-{owner}-")] == []  # Ctrl-C removed every host


def consul_get(run: ClusterProcess, path: str, via: str = "edge") -> object:
    """A read through ``via``'s own agent (edge's is never broken here), as the "cli" identity."""
    request = urllib.request.Request(
        run.host(via)["consul_http"] + path, headers={"X-Consul-Token": run.token("cli")}
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.loads(reply.read())


def leader(run: ClusterProcess) -> str:
    """The leader's ``address:8300`` as edge's agent knows it; "" while it knows none (500 mid-election)."""
    try:
        return str(consul_get(run, "/v1/status/leader"))
    except (OSError, ValueError):  # urllib's HTTPError and URLError are OSErrors
        return ""


def passing(run: ClusterProcess, service: str, via: str = "edge") -> set[str]:
    rows = consul_get(run, f"/v1/health/service/{service}?passing=1", via)
    assert isinstance(rows, list)
    return {f"{row['Service']['Address']}:{row['Service']['Port']}" for row in rows}


def app2_passing(run: ClusterProcess) -> dict[str, bool]:
    return {name: any(a.startswith(APP2 + ":") for a in passing(run, name)) for name in ON_APP2}


def reads(run: ClusterProcess) -> list[tuple[str, dict[str, str]]]:
    """Two idempotent routes: the catalogue (inventory) and a customer's orders (order)."""
    key = f"reader-{uuid.uuid4().hex[:8]}"
    email = f"{key}@example.com"
    body = {"email": email, "password": "correct-horse-9", "displayName": "R", "requestId": key}
    gateway_call(run.gateway_port, "POST", "/v1/users", body)
    login = {"email": email, "password": "correct-horse-9"}
    token = str(gateway_call(run.gateway_port, "POST", "/v1/users:login", login)["accessToken"])
    return [("/v1/products?pageSize=3", {}), ("/v1/orders", {"Authorization": f"Bearer {token}"})]


def mesh(run: ClusterProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh.cli", *args, "--control", run.env["MESH_CONTROL_FILE"]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_no_failed_call(load: Load, at_least: int) -> None:
    print(f"through the gateway: {dict(load.statuses)}")
    assert load.failures == [], load.failures
    assert set(load.statuses) == {200} and load.calls() >= at_least


def test_each_instance_runs_on_its_host_and_the_readme_walkthrough_works(shop: ClusterProcess) -> None:
    assert passing(shop, "inventory") == {"10.213.37.21:50054", "10.213.37.22:50054"}
    assert passing(shop, "order") == {"10.213.37.21:50052", "10.213.37.22:50052"}
    assert passing(shop, "payment") == {"10.213.37.22:50053", "10.213.37.23:50053"}
    assert passing(shop, "gateway") == {"10.213.37.31:8080"}
    port = shop.gateway_port
    email = "walk@example.com"
    body = {"email": email, "password": "correct-horse-9", "displayName": "Walk", "requestId": "signup-walk"}
    gateway_call(port, "POST", "/v1/users", body)
    login = {"email": email, "password": "correct-horse-9"}
    token = str(gateway_call(port, "POST", "/v1/users:login", login)["accessToken"])
    order = {
        "items": [{"sku": "TEA-MATCHA", "quantity": 1}],
        "shippingAddress": {
            "recipient": "Ada",
            "line1": "1-1 Chiyoda",
            "city": "Tokyo",
            "postalCode": "100-0001",
            "countryCode": "JP",
        },
        "requestId": "order-walk",
    }
    created = gateway_call(port, "POST", "/v1/orders", order, token)

    def confirmed() -> bool:
        got = gateway_call(port, "GET", f"/v1/orders/{created['orderId']}", token=token)
        return got["status"] == "ORDER_STATUS_CONFIRMED"

    wait_until_blocking(confirmed, 30, "the order confirmed", step=0.2)

    def invoiced() -> bool:  # payment's billing consumer, from the event relayed through RabbitMQ
        return bool(gateway_call(port, "GET", "/v1/invoices", token=token).get("invoices"))

    wait_until_blocking(invoiced, 30, "an invoice from the order.confirmed event", step=0.2)

    # grpcurl inside a host, with the "cli" identity's certificate (the printed lines)
    consul = f"CONSUL_HTTP_ADDR={shop.consul} CONSUL_HTTP_TOKEN_FILE={shop.state['tokens']}/cli"
    certs = Path(shop.env["MESH_CLUSTER_DIR"]) / "cli-certs"
    done = subprocess.run(
        f"{consul} .venv/bin/mesh cert --client cli --out {certs} && ip netns exec "
        f"{shop.host('app2')['namespace']} .venv/bin/grpcurl -insecure -cert {certs}/cert.pem "
        f"-key {certs}/key.pem {APP2}:50054 list",
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "shop.inventory.v1.InventoryService" in done.stdout


def test_a_rolling_restart_across_hosts_under_load_fails_no_call(shop: ClusterProcess) -> None:
    with Load(shop.gateway_port, reads(shop)) as load:
        for service in ("inventory", "order"):
            before = load.calls()
            restarted = mesh(shop, "restart", service)
            assert restarted.returncode == 0, restarted.stderr
            assert "SERVING again (2 of 2 restarted)" in restarted.stdout, restarted.stdout
            assert "10.213.37.21" in restarted.stdout and APP2 in restarted.stdout  # both hosts
            assert load.calls() > before
    assert_no_failed_call(load, at_least=50)


def test_a_partitioned_host_leaves_the_passing_sets_and_comes_back_on_heal(shop: ClusterProcess) -> None:
    with Load(shop.gateway_port, reads(shop)) as load:
        shop.partition("app2")
        try:
            cut = wait_until_blocking(
                lambda: not any(app2_passing(shop).values()), 30, "app2's instances critical", POLL
            )
            during = load.calls()
            wait_until_blocking(lambda: load.calls() > during + 40, 30, "calls served without app2", POLL)
        finally:
            shop.heal("app2")
        healed = wait_until_blocking(lambda: all(app2_passing(shop).values()), 60, "app2 passing again", POLL)
    print(f"partition -> app2 critical everywhere: {cut:.2f} s; heal -> passing again: {healed:.2f} s")
    assert_no_failed_call(load, at_least=50)


def test_a_killed_leader_is_replaced_within_five_seconds_and_discovery_goes_on(shop: ClusterProcess) -> None:
    leader_address = leader(shop).rsplit(":", 1)[0]
    killed = next(name for name, host in shop.state["hosts"].items() if host["address"] == leader_address)
    log = Path(shop.env["MESH_CLUSTER_DIR"]) / f"{killed}-again.log"
    with Load(shop.gateway_port, reads(shop)) as load:
        shop.kill_agent(killed)
        try:

            def new_leader() -> bool:
                seen = leader(shop)
                return bool(seen) and not seen.startswith(leader_address + ":")

            took = wait_until_blocking(new_leader, NEW_LEADER_WITHIN, "a new Raft leader", POLL)
            scaled = mesh(shop, "scale", "inventory", "3")  # a new instance registers after
            assert scaled.returncode == 0, scaled.stderr
            assert len(passing(shop, "inventory")) == 3
        finally:
            shop.start_agent(killed, log)
        down = mesh(shop, "scale", "inventory", "2")
        assert down.returncode == 0, down.stderr
        wait_until_blocking(lambda: len(passing(shop, "inventory")) == 2, 30, "inventory back to 2", POLL)

        def three_servers() -> bool:
            try:
                peers = consul_get(shop, "/v1/status/peers")
            except (OSError, ValueError):
                return False
            return isinstance(peers, list) and len(peers) == 3 and bool(leader(shop))

        wait_until_blocking(three_servers, 60, f"{killed} back among the servers", POLL)
    print(f"leader {killed} SIGKILLed -> new leader after {took:.2f} s")
    assert_no_failed_call(load, at_least=50)


def test_a_killed_client_agent_takes_its_host_out_until_it_is_back(shop: ClusterProcess) -> None:
    log = Path(shop.env["MESH_CLUSTER_DIR"]) / "app2-agent-again.log"
    with Load(shop.gateway_port, reads(shop)) as load:
        shop.kill_agent("app2")
        try:
            gone = wait_until_blocking(
                lambda: not any(app2_passing(shop).values()), 30, "app2 critical (serfHealth)", POLL
            )
            checks = consul_get(shop, "/v1/health/node/app2")
            assert isinstance(checks, list)
            assert any(c["CheckID"] == "serfHealth" and c["Status"] == "critical" for c in checks)
        finally:
            shop.start_agent("app2", log)
        back = wait_until_blocking(
            lambda: all(app2_passing(shop).values()), 60, "app2 registered again", POLL
        )
    print(f"app2's agent SIGKILLed -> critical after {gone:.2f} s; restarted -> passing after {back:.2f} s")
    assert_no_failed_call(load, at_least=50)


class KeyedOrders:
    """Customers placing orders through the gateway, each with its own request id.

    A keyed request is safe to send again (the order service answers a repeated key with the
    order it made), so a client resends one the gateway answered 502/503/504 or that lost its
    connection, up to :data:`RESENDS` times: a failure is a key that never got its 200.
    """

    RESENDS = 5
    MAX_ORDERS = 400  # per client

    def __init__(self, port: int, tokens: list[str]) -> None:
        self.port = port
        self.statuses: Counter[int] = Counter()
        self.failed: list[str] = []
        self.resent = 0
        self.placed: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(t,), daemon=True) for t in tokens]

    def __enter__(self) -> KeyedOrders:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _client(self, token: str) -> None:
        for _ in range(self.MAX_ORDERS):
            if self._stop.is_set():
                return
            key = f"ord-{uuid.uuid4().hex[:12]}"
            body = json.dumps(
                {
                    "items": [{"sku": "TEA-SENCHA", "quantity": 1}],
                    "shippingAddress": {
                        "recipient": "K",
                        "line1": "1",
                        "city": "Tokyo",
                        "postalCode": "100-0001",
                        "countryCode": "JP",
                    },
                    "requestId": key,
                }
            )
            for attempt in range(self.RESENDS + 1):
                status, answer = self._post(token, body)
                with self._lock:
                    self.statuses[status] += 1
                if status == 200:
                    with self._lock:
                        self.placed.append(json.loads(answer)["orderId"])
                    break
                if status not in (0, 502, 503, 504) or attempt == self.RESENDS:
                    with self._lock:
                        self.failed.append(f"{key}: {status} {answer[:200]!r}")
                    break
                with self._lock:
                    self.resent += 1

    def _post(self, token: str, body: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        try:
            connection.request("POST", "/v1/orders", body=body, headers=headers)
            reply = connection.getresponse()
            return reply.status, reply.read()
        except (OSError, http.client.HTTPException) as error:
            return 0, str(error).encode()
        finally:
            connection.close()


def leased_by(database: str, pid: int) -> list[str]:
    """Orders whose saga lease the process ``pid`` holds right now."""
    with psycopg.connect(database, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT order_id FROM orders WHERE lease_owner LIKE %s", (f"%:{pid}:%",)
        ).fetchall()
    return [row[0] for row in rows]


def order_pid(shop: ClusterProcess, host: str) -> int:
    for pid in shop.pids(host):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"services.order" in command:
            return pid
    raise AssertionError(f"no order instance on {host}")


def test_a_host_lost_mid_saga_leaves_every_saga_terminal_under_another_lease(shop: ClusterProcess) -> None:
    """The last test: app2 stays down (its forwards to PostgreSQL die with it)."""
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0]
    dsn = {name: f"{base}/{database}" for name, database in shop.state["databases"].items()}
    port = shop.gateway_port
    tokens = []
    for number in range(4):
        key = f"buyer{number}-{uuid.uuid4().hex[:6]}"
        email = f"{key}@example.com"
        body = {"email": email, "password": "correct-horse-9", "displayName": "B", "requestId": key}
        gateway_call(port, "POST", "/v1/users", body)
        login = {"email": email, "password": "correct-horse-9"}
        tokens.append(str(gateway_call(port, "POST", "/v1/users:login", login)["accessToken"]))
    victim = order_pid(shop, "app2")
    with Load(port, reads(shop)) as load, KeyedOrders(port, tokens) as orders:
        held: list[str] = []

        def app2_holds_a_saga() -> bool:
            held[:] = leased_by(dsn["order"], victim)
            return bool(held)

        wait_until_blocking(app2_holds_a_saga, 60, "a saga in flight under app2's order instance", 0.005)
        killed = shop.kill_host("app2")
        assert victim in killed
        more = len(orders.placed) + 20
        wait_until_blocking(lambda: len(orders.placed) > more, 60, "orders placed without app2", POLL)
    print(
        f"app2 killed with {len(held)} saga(s) in flight under its lease; orders {len(orders.placed)}, "
        f"resent {orders.resent}, statuses {dict(orders.statuses)}"
    )
    assert orders.failed == [], orders.failed
    assert_no_failed_call(load, at_least=20)
    databases = ShopDatabases(**{n: dsn[n] for n in ("order", "inventory", "payment", "shipping")})
    assert asyncio.run(violations(databases, settle_seconds=30)) == []
    with psycopg.connect(dsn["order"], autocommit=True) as connection:
        states = dict(
            connection.execute(
                "SELECT order_id, status FROM orders WHERE order_id = ANY(%s)", (held,)
            ).fetchall()
        )
    assert set(states) == set(held)
    assert set(states.values()) <= {"CONFIRMED", "CANCELLED"}, states
    # Finished elsewhere: app2's instance leaves the passing set once Consul's failure detection
    # marks the dead host's node critical (its agent died with it: seconds after the kill).
    wait_until_blocking(
        lambda: not any(a.startswith(APP2 + ":") for a in passing(shop, "order")),
        30,
        "app2's order instance out of Consul's passing set",
        POLL,
    )
