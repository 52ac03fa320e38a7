"""``mesh dashboard`` in a real headless chromium, over a real mesh (see conftest.py).

Read as a person would: the page lists the services and the gateway; under load through the
gateway, the gateway->inventory edge's calls/s changes between two reads; a frozen (SIGSTOP)
inventory instance turns critical on the page within 3 s, and a retried call's attempts show
as separate bars in its trace's waterfall; an order placed through the gateway opens as a
waterfall with a span for every hop; a lost Consul shows as a banner while the page keeps the
last view. Screenshots: dashboard-*.png (conftest.py says where).

Nothing sleeps for a state: the DOM is polled (Playwright's waits) until it shows it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.integration.dashboard.conftest import Load, Mesh, VerdictWatch, wait_until
from tests.integration.gateway.conftest import http_request, register
from tests.support.freeze import freeze

pytestmark = pytest.mark.xdist_group("dashboard-browser")  # one mesh, read in order
EDGE = '[data-edge="gateway->inventory"]'
NO_VALUE = "\u2013"  # the page's dash for "no number yet"
ADDRESS = {
    "recipient": "Ada",
    "line1": "1-1 Chiyoda",
    "city": "Tokyo",
    "postalCode": "100-0001",
    "countryCode": "JP",
}


def screenshot(directory: Path, target: Any, name: str, **options: Any) -> None:
    """A PNG of the page or of one element (a Playwright Locator), kept small enough for docs/img/."""
    path = directory / f"dashboard-{name}.png"
    target.screenshot(path=str(path), **options)
    assert path.stat().st_size < 300_000, f"{path} is {path.stat().st_size} bytes"


def text_of(page: Any, selector: str) -> str:
    return str(page.locator(selector).first.text_content(timeout=10_000) or "")


def test_the_page_shows_every_service_and_the_gateway(mesh: Mesh, browser_page: Any) -> None:
    page = browser_page
    for name in ("gateway", "user", "order", "payment", "inventory", "shipping"):
        page.wait_for_selector(f'[data-service="{name}"]', state="attached", timeout=15_000)
    inventory = page.locator('[data-service="inventory"]')
    page.wait_for_function(
        "() => document.querySelector('[data-service=\"inventory\"]').dataset.passing === '2'", timeout=15_000
    )
    assert inventory.locator("rect[data-instance]").count() == 2
    assert page.locator("#live").get_attribute("data-state") == "live"
    assert page.locator("#consul-error").is_hidden()
    assert page.locator('#services tr[data-service-row="gateway"]').count() == 1


def test_prometheus_finds_every_instance_through_the_dashboards_discovery_endpoint(mesh: Mesh) -> None:
    with urllib.request.urlopen(f"{mesh.dashboard.url}sd", timeout=10) as reply:
        groups = json.loads(reply.read())
    targets = {(g["labels"]["service"], target) for g in groups for target in g["targets"]}
    assert {service for service, _ in targets} >= {
        "gateway",
        "user",
        "order",
        "payment",
        "inventory",
        "shipping",
    }
    assert sum(1 for service, _ in targets if service == "inventory") == 2
    for service, target in targets:  # each a metrics port that answers with the mesh's metrics
        family = b"gateway_requests_total" if service == "gateway" else b"grpc_server_started_total"
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=10) as reply:
            assert family in reply.read(), (service, target)


def test_an_edge_rate_moves_under_load(mesh: Mesh, browser_page: Any, screenshots: Path) -> None:
    page = browser_page
    with Load(mesh.gateway) as load:
        page.wait_for_selector(EDGE, state="attached", timeout=20_000)
        first = wait_until(
            lambda: (value := text_of(page, f"{EDGE} .rps")) not in ("", NO_VALUE, "0.0") and value,
            20.0,
            "a gateway->inventory rate above zero",
        )
        second = wait_until(
            lambda: (value := text_of(page, f"{EDGE} .rps")) != first and value,
            15.0,
            f"the rate to change from {first}",
        )
        assert float(second) > 0
        assert text_of(page, f"{EDGE} .success").endswith("%")
        assert text_of(page, f"{EDGE} .p99") not in ("", NO_VALUE)
        row = page.locator('#services tr[data-service-row="inventory"] .rps')
        assert float(row.text_content() or "0") > 0
        screenshot(screenshots, page, "overview")  # the viewport: topology, services, calls, instances
    assert load.answers.get(200, 0) > 20, load.answers


def test_a_frozen_instance_turns_critical_within_3_seconds_and_its_retries_show(
    mesh: Mesh, browser_page: Any, screenshots: Path
) -> None:
    page = browser_page
    frozen = mesh.frozen_candidate
    instance = mesh.instance_id(frozen)
    marker = f'[data-instance="{instance}"]'
    page.wait_for_selector(f'{marker}[data-health="passing"]', state="attached", timeout=15_000)
    with Load(mesh.gateway, threads=6) as load, VerdictWatch(mesh, "inventory", instance) as verdict:
        time.sleep(1.0)  # some calls in flight to both instances before the freeze
        try:
            freeze(frozen.pid)
            started = time.monotonic()  # frozen from here: every thread of it stopped
            try:
                page.wait_for_selector(f'{marker}[data-health="critical"]', state="attached", timeout=3_000)
            except PlaywrightTimeout:
                raise AssertionError(
                    f"not critical on the page 3s after SIGSTOP; {verdict.since(started)}"
                ) from None
            took = time.monotonic() - started
            print(f"critical on the page {took:.2f}s after SIGSTOP; {verdict.since(started)}")
            row = page.locator(f'#instances tr[data-instance-row="{instance}"]')
            assert row.get_attribute("data-health") == "critical"
            node = page.locator('[data-service="inventory"]')
            assert node.get_attribute("data-passing") == "1"
            screenshot(screenshots, page.locator("#topology-card"), "critical")
            # Calls that picked the frozen instance before Consul's verdict timed out there and
            # were retried on the other one: their traces carry separate attempt spans.
            page.locator("#traces-interesting").check()
            retried = wait_until(
                lambda: page.locator("#traces tr[data-trace]:has(.pill.retry)").count(),
                15.0,
                "a trace with retried attempts in the list",
            )
            assert retried
        finally:
            os.kill(frozen.pid, signal.SIGCONT)
    page.locator("#traces tr[data-trace]:has(.pill.retry)").first.click()
    attempts = page.locator("#waterfall .wf-row.attempt")
    attempts.first.wait_for(state="visible", timeout=10_000)
    assert attempts.count() >= 2
    labels = [attempts.nth(i).text_content() or "" for i in range(attempts.count())]
    assert any("attempt 1" in label for label in labels) and any("attempt 2" in label for label in labels)
    ports = {label.split(":")[-1].split()[0] for label in labels}
    assert str(frozen.port) in ports, labels  # the attempt that hung there, then another
    parents = {attempts.nth(i).get_attribute("data-parent") for i in range(attempts.count())}
    assert len(parents) == 1  # the attempts of one call, under that call's span
    screenshot(screenshots, page.locator("#waterfall-card"), "waterfall-retry")
    page.locator("#traces-interesting").uncheck()
    page.wait_for_selector(f'{marker}[data-health="passing"]', state="attached", timeout=15_000)
    assert load.answers.get(200, 0) > 0, load.answers


def test_an_order_opens_as_a_waterfall_with_a_span_per_hop(
    mesh: Mesh, browser_page: Any, screenshots: Path
) -> None:
    page = browser_page
    gateway = mesh.gateway
    _, token = register(gateway, f"u-{uuid.uuid4().hex[:10]}@example.com")
    trace_id = secrets.token_hex(16)
    body = {
        "items": [{"sku": "TEA-SENCHA", "quantity": "1"}],
        "shippingAddress": ADDRESS,
        "requestId": uuid.uuid4().hex,
    }
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    status, _, answer = gateway.request(
        "POST", "/v1/orders", body, token, headers={"traceparent": traceparent}
    )
    assert status == 200, answer
    row = page.locator(f'#traces tr[data-trace="{trace_id}"]')
    page.mouse.move(0, 0)  # the list holds still under the pointer: keep it away
    row.wait_for(state="attached", timeout=15_000)
    # Spans arrive in batches from five processes: wait until every hop's are in.
    wait_until(
        lambda: all(
            name in (row.locator("td").nth(2).text_content() or "")
            for name in ("gateway", "order", "inventory", "payment", "shipping")
        ),
        15.0,
        "spans of gateway, order, inventory, payment and shipping in the trace",
    )
    row.click()
    waterfall = page.locator("#waterfall")
    waterfall.locator(".wf-row").first.wait_for(state="visible", timeout=10_000)
    page.wait_for_function(
        f"() => document.getElementById('waterfall-id').textContent === '{trace_id}'", timeout=10_000
    )
    spans = waterfall.locator(".wf-row")
    rows = [
        {
            "span": spans.nth(i).get_attribute("data-span"),
            "parent": spans.nth(i).get_attribute("data-parent"),
            "kind": spans.nth(i).get_attribute("data-kind"),
            "service": spans.nth(i).get_attribute("data-span-service"),
        }
        for i in range(spans.count())
    ]
    by_id = {row["span"]: row for row in rows}
    # Each hop: the caller's CLIENT span, and the callee's SERVER span nested under it.
    hops = {
        (by_id[r["parent"]]["service"], r["service"])
        for r in rows
        if r["kind"] == "SERVER" and r["parent"] in by_id and by_id[r["parent"]]["kind"] == "CLIENT"
    }
    assert {
        ("gateway", "order"),
        ("order", "inventory"),
        ("order", "payment"),
        ("order", "shipping"),
    } <= hops, rows
    bar = waterfall.locator(".wf-row[data-kind='SERVER'] .wf-bar").first
    assert "width" in (bar.get_attribute("style") or "")
    screenshot(screenshots, page.locator("#waterfall-card"), "waterfall")


def test_a_lost_consul_shows_on_the_page_and_the_dashboard_keeps_serving(
    mesh: Mesh, browser_page: Any
) -> None:
    """Last: it stops the package's Consul agent (the mesh is torn down after this test)."""
    page = browser_page
    mesh.consul.stop()
    banner = page.locator("#consul-error")
    banner.wait_for(state="visible", timeout=10_000)
    assert "Consul" in (banner.text_content() or "")
    assert page.locator('[data-service="inventory"]').count() == 1  # the last view, kept
    assert mesh.dashboard.process.poll() is None
    status, _, body = http_request(int(mesh.dashboard.url.rsplit(":", 1)[1].strip("/")), "GET", "/healthz")
    assert status == 200 and b'"status":"ok"' in body
