"""docs/guide.md cannot rot: its files are the example's, and its commands work as written.

The guide puts examples/quotes (a service of a team's own) on the mesh beside the shop. Here:
every file the guide shows is byte for byte the example's; the generated code is what the
guide's command generates; and the guide's `make run` line (the launcher with
``MESH_TOPOLOGY=examples/quotes/topology.toml``, on free ports, mTLS and ACLs on) runs both
quotes instances, after which the guide's block of step 6 is run by bash as a person runs
it: REST through the gateway, the 400 naming the field, the OpenAPI route, grpcurl by
reflection with the cli identity. The dashboard then shows what step 7 says it shows, and
``mesh scale quotes 3`` adds an instance the way it does for the shop's services.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from services.common.settings import DEFAULT_PORTS
from services.launcher import TOKEN_DIR
from tests.support.freeze import freeze
from tests.support.launcher_run import read_until, run_block, stop_launcher
from tests.support.processes import ROOT, free_port
from tests.support.tokens import KeyPair
from tests.support.waiting import wait_until_blocking

GUIDE = ROOT / "docs" / "guide.md"
EXAMPLE_FILES = {
    "examples/quotes/protos/quotes/v1/quotes.proto",
    "examples/quotes/quotes_service/servicer.py",
    "examples/quotes/quotes_service/__main__.py",
    "examples/quotes/topology.toml",
}
FILE_BLOCK = re.compile(r"```\w+ (examples/\S+)\n(.*?)```", re.S)
READY_LINE = "Ctrl-C stops everything."
GUIDE_GATEWAY, GUIDE_QUOTES, GUIDE_DASHBOARD = 8080, 50060, 8081


def guide_block(heading: str, language: str = "sh") -> str:
    """The first ``language`` block under the guide's heading that starts with ``heading``."""
    match = re.search(rf"\n## {re.escape(heading)}.*?```{language}\n(.*?)```", GUIDE.read_text(), re.S)
    assert match, f"the guide has no {language} block under {heading!r}"
    return match.group(1)


def test_every_file_the_guide_shows_is_the_examples_file() -> None:
    blocks = FILE_BLOCK.findall(GUIDE.read_text())
    assert {path for path, _ in blocks} == EXAMPLE_FILES
    for path, text in blocks:
        assert (ROOT / path).read_text() == text, f"docs/guide.md shows an old {path}: copy the file in"


def test_the_generated_code_is_what_the_guides_command_makes() -> None:
    (command,) = guide_block("2. Generate").strip().splitlines()
    argv = command.split()
    assert argv[:2] == [".venv/bin/python", "tools/gen.py"]
    check = subprocess.run(
        [sys.executable, *argv[1:], "--check"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert check.returncode == 0, check.stderr


def http_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.loads(reply.read())


def consul_get(consul: str, path: str) -> Any:
    """A read of the launcher's Consul agent as the ``cli`` identity (ACLs are on)."""
    query = urllib.request.Request(
        f"http://{consul}{path}", headers={"X-Consul-Token": (TOKEN_DIR / "cli").read_text().strip()}
    )
    with urllib.request.urlopen(query, timeout=5) as reply:
        return json.loads(reply.read())


def passing_instances(consul: str, service: str) -> int:
    return len(consul_get(consul, f"/v1/health/service/{service}?passing=1"))


def allowed(consul: str, source: str, destination: str) -> bool:
    """What the agent's intentions answer for ``source`` calling ``destination``."""
    path = f"/v1/connect/intentions/check?source={source}&destination={destination}"
    return bool(consul_get(consul, path)["Allowed"])


def money(value: dict[str, Any]) -> int:
    """google.type.Money in proto3 JSON, as nanos."""
    return int(value.get("units", "0")) * 10**9 + int(value.get("nanos", 0))


def check_the_quote_calls(output: str) -> None:
    """Step 6's output: a quote, the 400's body, the OpenAPI route, describe, a gRPC quote."""
    quote_line, refused_line, paths_line, *rest = output.splitlines()
    quote = json.loads(quote_line)
    assert quote["sku"] == "TEA-SENCHA" and quote["quantity"] == 3 and quote["name"]
    assert money(quote["total"]) == 3 * money(quote["unitPrice"]) > 0
    assert quote["total"]["currencyCode"] == quote["unitPrice"]["currencyCode"]
    body, _, status = refused_line.rpartition(" HTTP ")
    assert status == "400"
    refused = json.loads(body)
    assert refused["code"] == 3  # INVALID_ARGUMENT, the field named in the details
    assert refused["details"][0]["fieldViolations"][0]["field"] == "quantity"
    assert paths_line == "['/v1/quotes/{sku}']"
    grpc_output = "\n".join(rest)
    assert (
        "rpc GetQuote ( .quotes.v1.GetQuoteRequest ) returns ( .quotes.v1.GetQuoteResponse )" in grpc_output
    )
    grpc_quote = json.loads(grpc_output[grpc_output.index("\n{\n") :])["quote"]  # after describe's text
    assert grpc_quote["sku"] == "TEA-MATCHA" and grpc_quote["quantity"] == 2
    assert money(grpc_quote["total"]) == 2 * money(grpc_quote["unit_price"]) > 0


def answer(url: str) -> tuple[int, bytes]:
    """Status and body of a GET through the gateway."""
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


def status_of(url: str) -> int:
    return answer(url)[0]


def keep_calling(url: str, stop: threading.Event) -> None:
    """Step 7's loop, bounded by count and time: a quote at a time until stopped."""
    deadline = time.monotonic() + 60
    for _ in range(3000):
        if stop.is_set() or time.monotonic() > deadline:
            return
        status_of(url)


def check_the_dashboard(dashboard: str, gateway: str) -> None:
    """Step 7: quotes with both instances, the two edges with calls, a GetQuote trace."""
    stop = threading.Event()
    caller = threading.Thread(
        target=keep_calling, args=(f"{gateway}/v1/quotes/TEA-SENCHA?quantity=2", stop), daemon=True
    )
    caller.start()
    try:

        def quotes_seen() -> dict[str, Any] | None:
            view = http_json(f"{dashboard}/api/view")
            services = {s["name"]: s for s in view["services"]}
            edges = {(e["source"], e["target"]): e["golden"] for e in view["edges"]}
            quotes = services.get("quotes")
            if quotes is None or [i["health"] for i in quotes["instances"]] != ["passing", "passing"]:
                return None
            if not all(i["scraped"] for i in quotes["instances"]):
                return None
            inbound, outbound = edges.get(("gateway", "quotes")), edges.get(("quotes", "inventory"))
            if not inbound or not outbound:
                return None
            if inbound["requests_per_second"] <= 0 or outbound["requests_per_second"] <= 0:
                return None
            return view

        wait_until_blocking(lambda: quotes_seen() is not None, 30, "quotes and its two edges with calls")

        def quote_trace() -> dict[str, Any] | None:
            listed = http_json(f"{dashboard}/api/traces")["traces"]
            for summary in listed:
                if summary["root"] == "quotes.v1.QuoteService/GetQuote" and {
                    "gateway",
                    "quotes",
                    "inventory",
                } <= set(summary["services"]):
                    return dict(summary)
            return None

        found: list[dict[str, Any]] = []

        def trace_found() -> bool:
            summary = quote_trace()
            if summary is not None:
                found.append(summary)
            return summary is not None

        wait_until_blocking(trace_found, 30, "a GetQuote trace through gateway, quotes and inventory")
        summary = found[-1]
        trace = http_json(f"{dashboard}/api/traces/{summary['trace_id']}")
        assert trace["trace_id"] == summary["trace_id"]
        assert len(trace["spans"]) >= 4  # the gateway's, quotes' server and client, inventory's
    finally:
        stop.set()
        caller.join(10)


def frozen(pids: list[int], url: str) -> tuple[int, bytes]:
    """The answer of ``url`` while the processes ``pids`` (the launcher's children) are stopped."""
    try:
        for pid in pids:
            freeze(pid)
        return answer(url)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


@pytest.mark.xdist_group("make-run")  # one launcher at a time: both write .run/certs/cli
def test_the_guides_service_runs_beside_the_shop_and_answers_as_the_guide_says(
    tmp_path: Path, jwt_keys: KeyPair
) -> None:
    run_line = guide_block("5. Put it beside the shop").strip()
    variable, _, command = run_line.partition(" ")
    assert command == "make run" and variable.startswith("MESH_TOPOLOGY=")
    ports = {name: free_port() for name in DEFAULT_PORTS}
    gateway_port, quotes_port, dashboard_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env.update({f"{name.upper()}_PORT": str(port) for name, port in ports.items()})
    env.update(
        MESH_TOPOLOGY=variable.removeprefix("MESH_TOPOLOGY="),
        QUOTES_PORT=str(quotes_port),
        GATEWAY_PORT=str(gateway_port),
        GATEWAY_RATE_LIMIT_PER_SECOND="0",  # step 7's loop is one client
        MESH_DASHBOARD_PORT=str(dashboard_port),
        MESH_XDS_PORT=str(free_port()),
        MESH_XDS_BOOTSTRAP=str(tmp_path / "xds-bootstrap.json"),
        MESH_CONTROL_FILE=str(tmp_path / "control.json"),
        CONSUL_HTTP_ADDR=f"127.0.0.1:{free_port()}",  # nothing there: the launcher starts its own agent
        MESH_DATA_DIR=str(tmp_path / "data"),
        MESH_JWT_PRIVATE_KEY_FILE=str(jwt_keys.private),
        MESH_JWT_PUBLIC_KEY_FILE=str(jwt_keys.public),
        MESH_GRACE_SECONDS="5",
        SHOP_AMQP_URL="none",  # no orders here: nothing left on the machine's broker
        PYTHONUNBUFFERED="1",
    )
    env.update({f"MESH_UPSTREAM_{name.upper()}": f"127.0.0.1:{port}" for name, port in ports.items()})
    launcher = subprocess.Popen(
        [sys.executable, "-m", "services.launcher"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        printed = read_until(launcher, READY_LINE, timeout=240)
        serving = [line for line in printed.splitlines() if line.strip().startswith("quotes ")]
        assert len(serving) == 2 and all("SERVING" in line for line in serving), printed
        assert f"127.0.0.1:{quotes_port}" in serving[0]
        gateway, dashboard = f"http://localhost:{gateway_port}", f"http://127.0.0.1:{dashboard_port}"
        block = (
            guide_block("6. Call it three ways")
            .replace(f"localhost:{GUIDE_GATEWAY}", f"localhost:{gateway_port}")
            .replace(f"localhost:{GUIDE_QUOTES}", f"localhost:{quotes_port}")
        )
        shell_env = dict(env, PATH=f"{Path(sys.executable).parent}:{env['PATH']}", VIRTUAL_ENV="")
        check_the_quote_calls(run_block(block, shell_env))
        assert status_of(f"{gateway}/v1/quotes/NO-SUCH-SKU") == 404
        status, body = answer(f"{gateway}/v1/quotes/bad%20sku%21")  # the inventory refuses it
        assert status == 400, body
        assert json.loads(body)["details"][0]["fieldViolations"][0]["field"] == "sku"
        assert f"http://127.0.0.1:{GUIDE_DASHBOARD}/" in GUIDE.read_text()
        check_the_dashboard(dashboard, gateway)
        # "mesh scale quotes 3 ... work as they do for the shop"
        mesh = str(Path(sys.executable).parent / "mesh")
        scaled = subprocess.run(
            [mesh, "scale", "quotes", "3"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert scaled.returncode == 0, scaled.stdout + scaled.stderr
        consul = env["CONSUL_HTTP_ADDR"]
        wait_until_blocking(lambda: passing_instances(consul, "quotes") == 3, 60, "a third quotes instance")
        # "quotes may call inventory; every other call stays denied"
        assert allowed(consul, "quotes", "inventory") and allowed(consul, "gateway", "quotes")
        assert not allowed(consul, "quotes", "payment") and not allowed(consul, "order", "quotes")
        # "Freeze both, and a quote answers 503 inventory is unavailable"
        inventory_pids = [int(pid) for pid in re.findall(r"^\s*inventory\s+\S+\s+pid (\d+)", printed, re.M)]
        assert len(inventory_pids) == 2, printed
        status, body = frozen(inventory_pids, f"{gateway}/v1/quotes/TEA-SENCHA")
        assert status == 503, body
        assert json.loads(body)["message"] == "inventory is unavailable"
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(60) == 0
    finally:
        stop_launcher(launcher)
    probe = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{quotes_port}"], capture_output=True)
    assert probe.returncode != 0  # the app's instances were stopped with the shop
