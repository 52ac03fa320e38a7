"""``mesh dashboard``: the process, wired from its settings.

What runs, in start order: the OTLP receiver (so the first spans have somewhere to go), the
sampler over a :class:`mesh.observe.collector.MeshObserver`, then the HTTP server; then one
line on stdout saying where the page and the receiver are, and with ``--register`` the Consul
entry (mesh/dashboard/registration.py). SIGTERM/SIGINT stop it in reverse, the entry first.
Nothing here fails because Consul or an instance does not answer: the page says so.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence

from aiohttp import web

from mesh.dashboard.app import build_app
from mesh.dashboard.otlp import OtlpReceiver
from mesh.dashboard.registration import DashboardRegistrar, dashboard_instance
from mesh.dashboard.sampler import HealthFeed, Sampler, ViewSource
from mesh.dashboard.settings import DashboardSettings, add_arguments, dashboard_settings
from mesh.dashboard.traces import TraceStore
from mesh.errors import ConfigError, RegistryUnavailable
from mesh.logs.setup import configure_logging
from mesh.observe.http_sd import http_sd_handler
from mesh.server.signals import install_stop_signals

log = logging.getLogger(__name__)

STOP_STEP_SECONDS = 5.0  # the HTTP runner's own shutdown_timeout (2 s) fits in it
SourceFactory = Callable[[DashboardSettings], ViewSource]


def mesh_observer(settings: DashboardSettings) -> ViewSource:
    """The real source: Consul's catalog and health, and every instance's /metrics."""
    from mesh.observe.collector import MeshObserver

    return MeshObserver(
        settings.consul_address,
        settings.consul_token,
        window_seconds=settings.window_seconds,
        scrape_timeout=settings.scrape_timeout,
    )


class Dashboard:
    """Every part of a running dashboard; :meth:`start` it, then :meth:`stop` it."""

    def __init__(self, settings: DashboardSettings, source: ViewSource) -> None:
        self.settings = settings
        self.store = TraceStore(settings.max_traces, settings.max_spans_per_trace)
        self.receiver = OtlpReceiver(self.store)
        feed = source if isinstance(source, HealthFeed) else None
        self.sampler = Sampler(source, settings.interval, settings.sample_timeout, feed)
        discovery = http_sd_handler(settings.consul_address, settings.consul_token)
        self.app = build_app(self.sampler, self.store, self.receiver, settings.interval, discovery)
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        self.registrar: DashboardRegistrar | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}/"

    async def start(self) -> None:
        settings = self.settings
        await self.receiver.start(settings.host, settings.otlp_port)
        self.sampler.start()
        await self.runner.setup()
        site = web.TCPSite(self.runner, settings.host, settings.port)
        await site.start()
        self.port = int(self.runner.addresses[0][1])
        if settings.register:
            await self._register()

    async def _register(self) -> None:
        settings = self.settings
        self.registrar = DashboardRegistrar(settings.consul_address, token=settings.consul_token)
        instance = dashboard_instance(settings.address, self.port, self.receiver.port)
        try:
            await self.registrar.register(instance)
        except RegistryUnavailable as error:  # the registrar keeps retrying in the background
            log.warning("could not register %s yet (%s); retrying in the background", instance.id, error)

    async def stop(self) -> None:
        """Withdraw the entry, stop the page, the sampler, the receiver; a step that hangs is left."""
        registrar, self.registrar = self.registrar, None
        if registrar is not None:
            await registrar.on_stopping()  # never raises
        for name, step in (
            ("http", self.runner.cleanup),
            ("sampler", self.sampler.stop),
            ("otlp", self.receiver.stop),
        ):
            try:
                async with asyncio.timeout(STOP_STEP_SECONDS):
                    await step()
            except TimeoutError:
                log.warning("a part did not stop in time", extra={"part": name})


async def serve(settings: DashboardSettings, source_factory: SourceFactory = mesh_observer) -> None:
    dashboard = Dashboard(settings, source_factory(settings))
    stopped = asyncio.Event()
    try:
        await dashboard.start()
    except BaseException:
        await dashboard.stop()
        raise
    print(
        f"dashboard  {dashboard.url}  (OTLP {settings.host}:{dashboard.receiver.port})",
        flush=True,
    )
    log.info("dashboard serving", extra={"url": dashboard.url, "otlp_port": dashboard.receiver.port})

    async def stop() -> None:
        try:
            await dashboard.stop()
        finally:
            stopped.set()

    install_stop_signals(asyncio.get_running_loop(), stop)
    await stopped.wait()


def run_command(options: argparse.Namespace | None = None) -> int:
    """``mesh dashboard`` (and ``python -m mesh.dashboard``): 2 on a bad setting or port."""
    try:
        settings = dashboard_settings(os.environ, options)
    except ConfigError as error:
        print(f"mesh dashboard: {error}", file=sys.stderr)
        return 2
    configure_logging("dashboard", settings.log_level)
    try:
        asyncio.run(serve(settings))
    except OSError as error:
        print(f"mesh dashboard: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mesh.dashboard", description="the live mesh dashboard")
    add_arguments(parser)
    return run_command(parser.parse_args(argv))
