"""The dashboard's HTTP side with a fake observer: the page, /api/view, the SSE stream, traces, health.

The app runs on aiohttp's test server (a real socket on 127.0.0.1), its OTLP receiver on a
real grpc.aio port; only the collector is replaced by a fake that returns hand-made views.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from mesh.dashboard.app import build_app
from mesh.dashboard.main import Dashboard
from mesh.dashboard.otlp import SERVICE, OtlpReceiver
from mesh.dashboard.sampler import FEED_MIN_GAP_SECONDS, Sampler
from mesh.dashboard.settings import DashboardSettings
from mesh.dashboard.traces import TraceStore
from mesh.observe.model import EdgeView, Golden, InstanceView, MeshView, ServiceView, as_json

TRACE = 0x0AF7651916CD43DD8448EB211C80319C


def view_at(at: float, rps: float = 12.5) -> MeshView:
    instance = InstanceView("inventory", "inventory-1", "127.0.0.1", 5004, "node-a", "passing", 9004, True)
    down = InstanceView(
        "inventory", "inventory-2", "127.0.0.1", 5014, "node-a", "critical", 9014, False, "timed out"
    )
    return MeshView(
        at=at,
        window_seconds=10.0,
        services=(ServiceView("inventory", (instance, down), Golden(rps, 1.0, 1.5, 9.0)),),
        edges=(EdgeView("gateway", "inventory", Golden(rps, math.nan, None, None)),),
    )


class FakeObserver:
    """Returns the views it is given in turn (an exception is raised instead); the last repeats."""

    def __init__(self, *answers: MeshView | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.closed = False

    async def sample(self) -> MeshView:
        self.calls += 1
        answer = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def close(self) -> None:
        self.closed = True


class Hanging(FakeObserver):
    async def sample(self) -> MeshView:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


async def client_for(sampler: Sampler, store: TraceStore, interval: float = 0.05) -> TestClient[Any, Any]:
    receiver = OtlpReceiver(store)
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(sampler, store, receiver, interval)))
    await client.start_server()
    return client


@pytest.fixture
async def store() -> TraceStore:
    return TraceStore()


@pytest.fixture
async def running(store: TraceStore) -> AsyncIterator[tuple[TestClient[Any, Any], Sampler]]:
    sampler = Sampler(FakeObserver(view_at(1_700_000_000.0)), interval=0.05)
    sampler.start()
    client = await client_for(sampler, store)
    try:
        yield client, sampler
    finally:
        await client.close()
        await sampler.stop()


async def test_the_page_and_its_static_files_are_served_locally(
    running: tuple[TestClient[Any, Any], Sampler],
) -> None:
    client, _ = running
    page = await client.get("/")
    assert page.status == 200
    html = await page.text()
    assert "/static/app.js" in html and "/static/style.css" in html
    assert "http://" not in html and "https://" not in html  # no CDN: everything from here
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        answer = await client.get(f"/static/{name}")
        assert answer.status == 200 and kind in answer.headers["Content-Type"]
    assert (await client.get("/static/../settings.py")).status in (403, 404)


async def test_api_view_is_the_latest_sample_as_json_with_nan_as_null(
    running: tuple[TestClient[Any, Any], Sampler],
) -> None:
    client, sampler = running
    await sampler.wait_newer(0, 5.0)
    answer = await client.get("/api/view")
    assert answer.status == 200
    data = json.loads(await answer.text())  # strict JSON: a NaN would not parse in a browser
    expected = as_json(view_at(1_700_000_000.0))
    expected["edges"][0]["golden"]["success_rate"] = None
    assert {k: v for k, v in data.items() if k != "version"} == expected
    assert data["version"] >= 1
    instance = data["services"][0]["instances"][1]
    assert (instance["health"], instance["scraped"], instance["error"]) == ("critical", False, "timed out")


async def read_events(response: Any, count: int) -> list[tuple[str, Any]]:
    events: list[tuple[str, Any]] = []
    event = ""
    while len(events) < count:
        line = (await asyncio.wait_for(response.content.readline(), 5)).decode().rstrip("\n")
        if line.startswith("event: "):
            event = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((event, json.loads(line.removeprefix("data: "))))
    return events


async def test_the_event_stream_sends_a_view_per_sample_and_traces_when_they_change(
    running: tuple[TestClient[Any, Any], Sampler], store: TraceStore
) -> None:
    client, _ = running
    response = await client.get("/api/events")
    assert response.headers["Content-Type"].startswith("text/event-stream")
    first = await read_events(response, 2)
    assert [name for name, _ in first] == ["view", "traces"]
    assert first[1][1]["traces"] == []
    later = await read_events(response, 3)
    assert [name for name, _ in later] == ["view"] * 3  # no spans arrived: no traces event
    versions = [data["version"] for _, data in first[:1] + later]
    assert versions == sorted(versions) and versions[-1] > versions[0]
    receiver = OtlpReceiver(store)
    receiver.handle(export_bytes())
    names = [name for name, _ in await read_events(response, 3)]
    assert "traces" in names
    response.close()


def export_bytes() -> bytes:
    spans = [
        ReadableSpan(
            "shop.inventory.v1.InventoryService/ListProducts",
            context=SpanContext(TRACE, 0x10, False, TraceFlags(1)),
            resource=Resource.create({"service.name": "gateway"}),
            kind=SpanKind.CLIENT,
            start_time=1_700_000_000_000_000_000,
            end_time=1_700_000_000_002_000_000,
            attributes={"mesh.attempt": 1, "server.address": "127.0.0.1", "server.port": 5004},
        ),
        ReadableSpan(
            "shop.inventory.v1.InventoryService/ListProducts",
            context=SpanContext(TRACE, 0x20, False, TraceFlags(1)),
            parent=SpanContext(TRACE, 0x10, True, TraceFlags(1)),
            resource=Resource.create({"service.name": "inventory"}),
            kind=SpanKind.SERVER,
            start_time=1_700_000_000_000_500_000,
            end_time=1_700_000_000_001_500_000,
        ),
    ]
    return bytes(encode_spans(spans).SerializeToString())


async def test_traces_arrive_over_otlp_grpc_and_are_served_as_a_list_and_one_by_one(
    store: TraceStore,
) -> None:
    receiver = OtlpReceiver(store)
    port = await receiver.start("127.0.0.1", 0)
    sampler = Sampler(FakeObserver(view_at(1.0)), interval=0.05)
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(sampler, store, receiver, 0.05)))
    await client.start_server()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            export = channel.unary_unary(f"/{SERVICE}/Export")
            assert await export(export_bytes(), timeout=5) == b""
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await export(b"\xff\xff\xff", timeout=5)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        listed = await (await client.get("/api/traces")).json()
        assert [t["trace_id"] for t in listed["traces"]] == [f"{TRACE:032x}"]
        assert listed["traces"][0]["services"] == ["gateway", "inventory"]
        one = await client.get(f"/api/traces/{TRACE:032x}")
        spans = (await one.json())["spans"]
        assert [(s["service"], s["kind"]) for s in spans] == [("gateway", "CLIENT"), ("inventory", "SERVER")]
        assert spans[1]["parent_span_id"] == spans[0]["span_id"]
        missing = await client.get(f"/api/traces/{'0' * 32}")
        assert missing.status == 404
        health = await (await client.get("/healthz")).json()
        assert (health["traces"], health["otlp_exports"], health["otlp_refused"]) == (1, 1, 1)
        assert (await client.get("/api/traces?limit=x")).status == 400
    finally:
        await client.close()
        await receiver.stop()


async def test_a_failing_sample_keeps_the_last_view_and_says_why() -> None:
    sampler = Sampler(FakeObserver(view_at(5.0), RuntimeError("consul refused")), interval=0.01)
    await sampler.sample_once()
    failed = await sampler.sample_once()
    assert failed.at == 5.0 and failed.services == view_at(5.0).services
    assert "consul refused" in failed.consul_error
    assert sampler.failures == 1 and sampler.version == 2


async def test_a_hung_sample_times_out_and_the_loop_goes_on() -> None:
    source = Hanging()
    sampler = Sampler(source, interval=0.01, timeout=0.05)
    sampler.start()
    try:
        version = await sampler.wait_newer(0, 2.0)
        assert version >= 1
        assert "no sample within" in sampler.latest.consul_error
    finally:
        await sampler.stop()
    assert source.closed


async def test_the_stream_ends_when_the_app_shuts_down(store: TraceStore) -> None:
    sampler = Sampler(FakeObserver(view_at(1.0)), interval=0.05)
    client = await client_for(sampler, store)
    response = await client.get("/api/events")
    await read_events(response, 1)
    started = asyncio.get_running_loop().time()
    await client.close()  # runs on_shutdown, then waits for handlers
    assert asyncio.get_running_loop().time() - started < 2.0


async def test_the_dashboard_serves_on_free_ports_and_an_open_stream_does_not_hold_its_stop() -> None:
    source = FakeObserver(view_at(1.0))
    dashboard = Dashboard(DashboardSettings(interval=0.05), source)
    await dashboard.start()
    loop = asyncio.get_running_loop()
    try:
        assert dashboard.port and dashboard.receiver.port
        assert dashboard.url == f"http://127.0.0.1:{dashboard.port}/"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{dashboard.url}healthz") as answer:
                assert answer.status == 200
            stream = await session.get(f"{dashboard.url}api/events")
            await read_events(stream, 1)
            started = loop.time()
            await dashboard.stop()
            assert loop.time() - started < 3.0
            stream.close()
    finally:
        await dashboard.stop()
    assert source.closed


class ScriptedFeed:
    """A health feed whose index moves when the test says; records the index each call waited on."""

    def __init__(self) -> None:
        self.moves: asyncio.Queue[str] = asyncio.Queue()
        self.asked: list[str] = []
        self.waiting = asyncio.Event()  # set at each call

    async def health_changed(self, index: str, wait: float) -> str:
        self.asked.append(index)
        self.waiting.set()
        if not index:
            return "100"  # asked at once: the index now
        return await self.moves.get()


async def test_a_change_in_consuls_health_is_sampled_at_once_not_at_the_next_interval() -> None:
    feed = ScriptedFeed()
    sampler = Sampler(FakeObserver(view_at(1.0)), interval=60.0, feed=feed)
    sampler.start()
    try:
        first = await sampler.wait_newer(0, 5.0)
        assert first == 1
        await feed.moves.put("101")
        assert await sampler.wait_newer(first, 5.0) == 2  # not after the 60 s interval
        await feed.moves.put("5")  # Consul restarted: its index went back, so it starts over
        await wait_for_call(feed, 4)
        assert feed.asked[:4] == ["", "100", "101", ""]
        assert sampler.version == 3
    finally:
        await sampler.stop()


async def wait_for_call(feed: ScriptedFeed, calls: int) -> None:
    async with asyncio.timeout(5.0):
        while len(feed.asked) < calls:
            feed.waiting.clear()
            await feed.waiting.wait()


async def test_a_failing_health_feed_leaves_the_interval_samples_going() -> None:
    class Refusing:
        calls = 0

        async def health_changed(self, index: str, wait: float) -> str:
            self.calls += 1
            raise ConnectionRefusedError("consul refused")

    feed = Refusing()
    sampler = Sampler(FakeObserver(view_at(1.0)), interval=0.05, feed=feed)
    sampler.start()
    try:
        async with asyncio.timeout(5.0):
            while sampler.version < 3:  # three interval samples while the feed keeps failing
                await sampler.wait_newer(sampler.version, 1.0)
        assert feed.calls >= 1
    finally:
        await sampler.stop()


async def test_a_feed_that_answers_at_once_is_not_asked_in_a_tight_loop() -> None:
    """Flapping checks, or a proxy dropping the blocking arguments: the index moves on every answer."""

    class Instant:
        calls = 0

        async def health_changed(self, index: str, wait: float) -> str:
            self.calls += 1
            await asyncio.sleep(0)  # an answer over the network suspends, however quick
            return str(100 + self.calls)

    feed = Instant()
    sampler = Sampler(FakeObserver(view_at(1.0)), interval=60.0, feed=feed)
    sampler.start()
    try:
        async with asyncio.timeout(5.0):
            while sampler.version < 3:  # woken by the moving index, not by the 60 s interval
                await sampler.wait_newer(sampler.version, 1.0)
        started, calls = asyncio.get_running_loop().time(), feed.calls
        await asyncio.sleep(0.5)  # the span over which the calls are counted
        elapsed = asyncio.get_running_loop().time() - started
        assert feed.calls - calls <= elapsed / FEED_MIN_GAP_SECONDS + 2, feed.calls - calls
    finally:
        await sampler.stop()
