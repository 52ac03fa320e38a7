"""MeshObserver against a scripted Consul and real loopback HTTP metrics endpoints.

What matters here is what the collector does with the world around it: rates need two
samples, an instance that does not answer is reported (never raised), a restarted instance
gives no negative rate, a Consul that does not answer gives the last view with the error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from mesh.errors import RegistryUnavailable
from mesh.observe.collector import MeshObserver, describe, metrics_url
from mesh.registry.base import ServiceInstance
from mesh.registry.consul_api import HealthEntry
from tests.support.processes import free_port
from tests.unit.mesh.observe.expositions import rpc

USER = "shop.user.v1.UserService"


class ScriptedConsul:
    """The two ConsulApi calls the observer makes, answering from ``rows`` (or raising ``down``)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[HealthEntry]] = {}
        self.down: Exception | None = None
        self.closed = False

    async def services(self) -> dict[str, list[str]]:
        if self.down is not None:
            raise self.down
        return {"consul": [], **{name: [] for name in self.rows}}

    async def health(self, name: str, *, passing: bool = True) -> tuple[str, list[HealthEntry]]:
        assert not passing  # every instance, whatever its health
        return "1", self.rows[name]

    async def close(self) -> None:
        self.closed = True


def entry(name: str, port: int, metrics: int | str | None, status: str = "passing") -> HealthEntry:
    meta = {} if metrics is None else {"metrics_port": str(metrics)}
    instance = ServiceInstance(f"{name}-{port}", name, "127.0.0.1", port, meta=meta)
    return HealthEntry(instance, status, (), node="node-a")


class Exposition:
    """A loopback /metrics endpoint whose text a test sets."""

    def __init__(self) -> None:
        self.text = ""
        self.port = 0


@pytest.fixture
async def exposition() -> AsyncIterator[Exposition]:
    served = Exposition()

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=served.text, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    served.port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", served.port)
    await site.start()
    try:
        yield served
    finally:
        await runner.cleanup()


def observer(
    consul: ScriptedConsul, window: float = 0.0, clock: Callable[[], float] | None = None
) -> MeshObserver:
    api: Any = consul
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    return MeshObserver("http://127.0.0.1:1", window_seconds=window, scrape_timeout=1.0, api=api, **extra)


async def test_rates_need_two_samples_and_move_with_the_counters(exposition: Exposition) -> None:
    consul = ScriptedConsul()
    consul.rows["user"] = [entry("user", 5001, exposition.port)]
    watcher = observer(consul)
    exposition.text = rpc("server", USER, codes={"OK": 10}, buckets=(10, 10, 10, 10, 10, 10))
    first = await watcher.sample()
    assert first.window_seconds == 0 and first.services[0].inbound.success_rate is None
    (instance,) = first.services[0].instances
    assert instance.scraped and instance.node == "node-a" and instance.metrics_port == exposition.port
    exposition.text = rpc("server", USER, codes={"OK": 30, "INTERNAL": 10}, buckets=(40, 40, 40, 40, 40, 40))
    second = await watcher.sample()
    assert second.window_seconds > 0
    inbound = second.services[0].inbound
    assert inbound.requests_per_second == pytest.approx(30 / second.window_seconds)
    assert inbound.success_rate == pytest.approx(20 / 30)
    assert inbound.p50_ms is not None and inbound.p50_ms <= 5.0
    await watcher.close()
    assert consul.closed


async def test_a_restarted_instance_gives_no_negative_rate(exposition: Exposition) -> None:
    consul = ScriptedConsul()
    consul.rows["user"] = [entry("user", 5001, exposition.port)]
    watcher = observer(consul)
    exposition.text = rpc("server", USER, codes={"OK": 1000})
    await watcher.sample()
    exposition.text = rpc("server", USER, codes={"OK": 3}, created=99.0)
    view = await watcher.sample()
    assert view.services[0].inbound.requests_per_second == pytest.approx(3 / view.window_seconds)
    await watcher.close()


async def test_instances_whose_metrics_do_not_answer_are_reported_not_raised(exposition: Exposition) -> None:
    consul = ScriptedConsul()
    exposition.text = "not {the text format"
    consul.rows["user"] = [
        entry("user", 5001, free_port(), status="critical"),  # nothing listens there
        entry("user", 5002, None),
        entry("user", 5003, "x"),
        entry("user", 5004, exposition.port),  # answers, but not metrics
    ]
    watcher = observer(consul)
    view = await watcher.sample()
    errors = {i.port: (i.scraped, i.error) for i in view.services[0].instances}
    assert not any(scraped for scraped, _ in errors.values())
    assert "Connect" in errors[5001][1], errors
    assert errors[5002][1] == "no metrics_port in its Consul meta"
    assert errors[5003][1] == "bad metrics_port 'x'"
    assert errors[5004][1].startswith("ValueError"), errors
    assert view.services[0].instances[0].health == "critical"
    await watcher.close()


async def test_consul_down_gives_the_last_view_with_the_error(exposition: Exposition) -> None:
    consul = ScriptedConsul()
    consul.down = RegistryUnavailable("consul", "list services: refused")
    watcher = observer(consul)
    empty = await watcher.sample()
    assert empty.services == () and "refused" in empty.consul_error
    consul.down = None
    consul.rows["user"] = [entry("user", 5001, exposition.port)]
    exposition.text = rpc("server", USER, codes={"OK": 1})
    good = await watcher.sample()
    assert good.consul_error == ""
    consul.down = RegistryUnavailable("consul", "list services: refused")
    stale = await watcher.sample()
    assert stale.services == good.services and stale.at == good.at and "refused" in stale.consul_error
    await watcher.close()


async def test_the_window_takes_the_newest_scrape_old_enough(exposition: Exposition) -> None:
    clock = [100.0]
    consul = ScriptedConsul()
    consul.rows["user"] = [entry("user", 5001, exposition.port)]
    watcher = observer(consul, window=10.0, clock=lambda: clock[0])

    async def at(now: float, ok: int) -> float:
        clock[0] = now
        exposition.text = rpc("server", USER, codes={"OK": ok})
        view = await watcher.sample()
        return view.window_seconds

    assert await at(100.0, 0) == 0.0
    assert await at(102.0, 20) == 2.0  # only the first to compare with
    assert await at(111.0, 110) == 11.0  # the first is still the newest >= 10 s old
    assert await at(113.0, 130) == 11.0  # 102 is now old enough
    await watcher.close()


@pytest.mark.parametrize(
    ("error", "text"),
    [(TimeoutError(), "TimeoutError"), (OSError("refused"), "OSError: refused")],
)
def test_errors_read_as_one_line(error: Exception, text: str) -> None:
    assert describe(error) == text


@pytest.mark.parametrize(
    ("address", "url"),
    [("10.0.0.1", "http://10.0.0.1:9/metrics"), ("::1", "http://[::1]:9/metrics")],
)
def test_metrics_url(address: str, url: str) -> None:
    assert metrics_url(address, 9) == url
