"""What `make run` starts, driven the way the README says: the printed grpcurl lines work.

The launcher runs as a real process on free ports, with mTLS on as `make run` runs it; the
README's grpcurl block (which fetches the "cli" identity's certificate with `mesh cert` and
presents it) is executed by bash with the real grpcurl binary, only the ports swapped; Ctrl-C
(SIGINT) stops all. Its Consul agent enforces ACLs: `mesh status` reads as the "cli" identity,
with its token file.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common.settings import DEFAULT_PORTS
from services.launcher import GATEWAY_PORT, TOKEN_DIR, XDS_BOOTSTRAP, curl_lines, try_lines, xds_lines
from services.mesh_policy import IDENTITIES
from tests.support.bus import Bus, bus_namespace
from tests.support.launcher_run import read_until, run_block, stop_launcher
from tests.support.processes import ROOT, free_port
from tests.support.tokens import KeyPair

READY_LINE = "Ctrl-C stops everything."


def readme_block(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"## {re.escape(heading)}.*?```sh\n(.*?)```", text, re.S)
    assert match, f"README has no block under {heading!r}"
    return match.group(1)


def test_readme_shows_the_lines_the_launcher_prints() -> None:
    grpc_block = readme_block("Try it with grpcurl")
    for line in try_lines(dict(DEFAULT_PORTS)):
        assert line in grpc_block
    rest_block = readme_block("Try it with curl")
    for line in curl_lines(GATEWAY_PORT):
        assert line in rest_block
    xds_block = readme_block("Any gRPC client through xDS")
    for line in xds_lines():
        assert line in xds_block


def assert_every_instance_passing(status: dict[str, Any]) -> None:
    """`mesh status --json`: all five services, two instances of inventory and payment, all passing."""
    services = {service["name"]: service for service in status["services"]}
    expected = {"user": 1, "order": 1, "payment": 2, "inventory": 2, "shipping": 1}
    assert {name: len(services[name]["instances"]) for name in expected} == expected
    for name, count in expected.items():
        assert services[name]["passing"] == count
        assert len(services[name]["endpoints"]) == count


# Invoices and notifications come from the event consumers a moment after CONFIRMED: poll.
AWAIT_INVOICE_AND_NOTIFICATIONS = """
for _ in $(seq 1 100); do
  INVOICES=$(curl -s $G/v1/invoices -H "Authorization: Bearer $TOKEN")
  NOTIFICATIONS=$(curl -s $G/v1/notifications -H "Authorization: Bearer $TOKEN")
  case "$INVOICES" in *"$ORDER"*) case "$NOTIFICATIONS" in *NOTIFICATION_KIND_ORDER_CONFIRMED*) break;; esac;; esac
  sleep 0.3
done
echo; echo "ORDER=$ORDER"
echo "INVOICES=$INVOICES"
echo "NOTIFICATIONS=$NOTIFICATIONS"
"""


def line_value(output: str, prefix: str) -> str:
    values = [line.removeprefix(prefix) for line in output.splitlines() if line.startswith(prefix)]
    assert values, f"no {prefix} line in {output!r}"
    return values[-1]


@pytest.fixture
def bus() -> Iterator[Bus]:
    with bus_namespace() as namespace:
        yield namespace


@pytest.mark.xdist_group("make-run")
def test_launcher_starts_the_shop_and_the_readme_lines_work(
    tmp_path: Path, jwt_keys: KeyPair, bus: Bus
) -> None:
    ports = {name: free_port() for name in DEFAULT_PORTS}
    gateway_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env.update({f"{name.upper()}_PORT": str(port) for name, port in ports.items()})
    env["GATEWAY_PORT"] = str(gateway_port)
    env["MESH_XDS_PORT"] = str(free_port())
    dashboard_port = free_port()
    env["MESH_DASHBOARD_PORT"] = str(dashboard_port)
    env["MESH_XDS_BOOTSTRAP"] = str(tmp_path / "xds-bootstrap.json")
    env["CONSUL_HTTP_ADDR"] = f"127.0.0.1:{free_port()}"  # nothing there: the launcher starts its own agent
    env.update(
        MESH_DATA_DIR=str(tmp_path / "data"),
        MESH_JWT_PRIVATE_KEY_FILE=str(jwt_keys.private),
        MESH_JWT_PUBLIC_KEY_FILE=str(jwt_keys.public),
        MESH_GRACE_SECONDS="5",
        PYTHONUNBUFFERED="1",
    )
    env.update({f"MESH_UPSTREAM_{name.upper()}": f"127.0.0.1:{port}" for name, port in ports.items()})
    env.update(bus.env())  # the machine's RabbitMQ, in a namespace of this test's own
    launcher = subprocess.Popen(
        [sys.executable, "-m", "services.launcher"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        printed = read_until(launcher, READY_LINE, timeout=240)
        assert "admin@example.com" in printed
        assert "mTLS is OFF" not in printed  # mTLS on, as `make run` runs it
        assert "ACLs on, default deny" in printed
        assert f"dashboard  http://127.0.0.1:{dashboard_port}/" in printed
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/", timeout=10) as page:
            assert b"<html" in page.read().lower()
        for identity in IDENTITIES:  # one token per identity, readable by its owner only
            assert stat.S_IMODE((TOKEN_DIR / identity).stat().st_mode) == 0o600
        grpc_block = readme_block("Try it with grpcurl")
        for name, default in DEFAULT_PORTS.items():
            grpc_block = grpc_block.replace(f"localhost:{default}", f"localhost:{ports[name]}")
        rest_block = readme_block("Try it with curl").replace(
            f"localhost:{GATEWAY_PORT}", f"localhost:{gateway_port}"
        )
        shell_env = dict(env, PATH=f"{Path(sys.executable).parent}:{env['PATH']}", VIRTUAL_ENV="")
        grpc_run = run_block(grpc_block, shell_env)
        assert "shop.inventory.v1.InventoryService" in grpc_run
        assert '"status": "ORDER_STATUS_CONFIRMED"' in grpc_run
        status = subprocess.run(
            [
                str(Path(sys.executable).parent / "mesh"),
                "status",
                "--consul",
                env["CONSUL_HTTP_ADDR"],
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(os.environ, CONSUL_HTTP_TOKEN_FILE=str(TOKEN_DIR / "cli")),  # as the launcher prints
        )
        assert status.returncode == 0, status.stderr
        assert_every_instance_passing(json.loads(status.stdout))
        # The xDS lines: a plain grpcio client and a Node one reach inventory through mesh xds.
        xds_block = readme_block("Any gRPC client through xDS").replace(
            str(XDS_BOOTSTRAP.relative_to(ROOT)), env["MESH_XDS_BOOTSTRAP"]
        )
        xds_run = run_block(
            xds_block.replace("mesh status", f"mesh status --consul {env['CONSUL_HTTP_ADDR']}"), shell_env
        )
        assert xds_run.count("CUP-KYUSU") == 2, xds_run  # the first sku: once from Python, once from Node
        assert "client(s) connected" in xds_run
        rest_run = run_block(rest_block + AWAIT_INVOICE_AND_NOTIFICATIONS, shell_env)
        assert '"userId":' in rest_run
        assert '"status":"ORDER_STATUS_CONFIRMED"' in rest_run.replace(" ", "")
        assert '"sku":"TEA-MATCHA"' in rest_run.replace(" ", "")
        assert '"steps":' in rest_run  # GetOrder shows the saga's history
        order = line_value(rest_run, "ORDER=")
        invoices = json.loads(line_value(rest_run, "INVOICES="))["invoices"]
        assert [i["orderId"] for i in invoices] == [order]  # exactly one, from the billing consumer
        notifications = json.loads(line_value(rest_run, "NOTIFICATIONS="))["notifications"]
        assert {n["orderId"] for n in notifications} == {order}
        assert "NOTIFICATION_KIND_ORDER_CONFIRMED" in {n["kind"] for n in notifications}
        launcher.send_signal(signal.SIGINT)
        # Drained while it stops: a launcher blocked on a full stdout pipe would never exit.
        said, _ = launcher.communicate(timeout=30)
        assert launcher.returncode == 0, said
    finally:
        stop_launcher(launcher)
    for port in [*ports.values(), gateway_port]:  # every child stopped: nothing listens any more
        probe = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True)
        assert probe.returncode != 0
