"""The dashboard's HTTP side: the page, its JSON and its live event stream (aiohttp.web).

Why aiohttp: it is already installed (py-consul's asyncio client needs it), it serves static
files and long-lived streaming responses in a few lines, and it runs in the same event loop
as the sampler and the grpc.aio OTLP receiver.

Routes:

- ``GET /``: the page (mesh/dashboard/static/index.html; its script and style under /static/);
- ``GET /api/view``: the latest :class:`~mesh.observe.model.MeshView` (``as_json``);
- ``GET /api/events``: Server-Sent Events: a ``view`` event per sample (at least one per
  interval) and a ``traces`` event (the recent traces list) whenever spans arrived;
- ``GET /api/traces?limit=N``: the recent traces, newest first, and apart those with an error
  or a retried attempt;
- ``GET /api/traces/<trace_id>``: every kept span of one trace (404 once evicted);
- ``GET /healthz``: samples taken, traces held, exports received;
- ``GET /sd``: Prometheus HTTP service discovery of every instance's metrics port, from
  Consul (:mod:`mesh.observe.http_sd`; deploy/prometheus/prometheus.yml points at it).

Numbers that are not finite (a NaN rate) go out as ``null``: JSON has no NaN.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from mesh.dashboard.otlp import OtlpReceiver
from mesh.dashboard.sampler import Sampler
from mesh.dashboard.traces import TraceStore
from mesh.observe.model import as_json

STATIC = Path(__file__).resolve().parent / "static"
RECENT_TRACES = 50
MAX_RECENT_TRACES = 500

SAMPLER = web.AppKey("sampler", Sampler)
STORE = web.AppKey("store", TraceStore)
RECEIVER = web.AppKey("receiver", OtlpReceiver)
INTERVAL = web.AppKey("interval", float)
STOPPING = web.AppKey("stopping", asyncio.Event)


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (recursively)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


def dumps(data: Any) -> str:
    return json.dumps(finite(data), allow_nan=False, separators=(",", ":"))


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=dumps(data),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


def view_json(sampler: Sampler) -> dict[str, Any]:
    data = as_json(sampler.latest)
    data["version"] = sampler.version
    return data


def traces_json(store: TraceStore, limit: int = RECENT_TRACES) -> dict[str, Any]:
    """The newest traces, and apart the newest with an error or a retry (else gone in a second)."""
    return {
        "version": store.version,
        "held": len(store),
        "notable_held": store.notable,
        "evicted": store.evicted,
        "traces": [summary.as_json() for summary in store.recent(limit)],
        "notable": [summary.as_json() for summary in store.recent(limit, notable_only=True)],
    }


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def view(request: web.Request) -> web.Response:
    return json_response(view_json(request.app[SAMPLER]))


async def traces(request: web.Request) -> web.Response:
    try:
        limit = int(request.query.get("limit", RECENT_TRACES))
    except ValueError:
        return json_response({"error": "limit must be an integer"}, 400)
    return json_response(traces_json(request.app[STORE], max(1, min(limit, MAX_RECENT_TRACES))))


async def trace(request: web.Request) -> web.Response:
    trace_id = request.match_info["trace_id"]
    found = request.app[STORE].trace_json(trace_id)
    if found is None:
        return json_response({"error": f"trace {trace_id} is not (or no longer) held"}, 404)
    return json_response(found)


async def health(request: web.Request) -> web.Response:
    app = request.app
    receiver = app[RECEIVER]
    return json_response(
        {
            "status": "ok",
            "samples": app[SAMPLER].version,
            "sample_failures": app[SAMPLER].failures,
            "traces": len(app[STORE]),
            "otlp_port": receiver.port,
            "otlp_exports": receiver.exports,
            "otlp_refused": receiver.refused,
        }
    )


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Event (``dumps`` writes no newline, so the data is one ``data:`` line)."""
    return f"event: {event}\ndata: {dumps(data)}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    """The live stream: the view at once and after every sample, the traces list when it changed."""
    app = request.app
    sampler, store, interval, stopping = app[SAMPLER], app[STORE], app[INTERVAL], app[STOPPING]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    seen_traces = -1
    try:
        await response.write(b"retry: 1000\n\n")
        while not stopping.is_set():
            version = sampler.version
            await response.write(sse("view", view_json(sampler)))
            if store.version != seen_traces:
                seen_traces = store.version
                await response.write(sse("traces", traces_json(store)))
            await sampler.wait_newer(version, interval)
    except ConnectionError:
        pass  # the browser went away
    return response


async def _on_shutdown(app: web.Application) -> None:
    app[STOPPING].set()  # every event stream ends now, so the runner's cleanup is quick
    app[SAMPLER].wake()


def build_app(
    sampler: Sampler,
    store: TraceStore,
    receiver: OtlpReceiver,
    interval: float,
    discovery: Handler | None = None,
) -> web.Application:
    app = web.Application()
    app[SAMPLER] = sampler
    app[STORE] = store
    app[RECEIVER] = receiver
    app[INTERVAL] = interval
    app[STOPPING] = asyncio.Event()
    app.router.add_get("/", index)
    app.router.add_get("/api/view", view)
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/traces", traces)
    app.router.add_get(r"/api/traces/{trace_id:[0-9a-fA-F]{32}}", trace)
    app.router.add_get("/healthz", health)
    app.router.add_static("/static", STATIC)
    if discovery is not None:
        app.router.add_get("/sd", discovery)
    app.on_shutdown.append(_on_shutdown)
    return app
