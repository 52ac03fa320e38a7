"""``gateway.__main__.run`` in the test's own loop, with signal handlers captured, not installed.

The entry point installs SIGTERM/SIGINT handlers on the running loop; capturing them lets a
test stop the gateway exactly as a signal would, without signalling the test process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway import __main__ as entry
from gateway.settings import GatewaySettings
from mesh.connect.settings import SecuritySettings
from mesh.identity import JwtSettings, generate_keypair


@dataclass
class Running:
    settings: GatewaySettings
    task: asyncio.Task[None]
    handlers: dict[int, Callable[[], None]]
    listening: logging.LogRecord

    @property
    def address(self) -> tuple[str, int]:
        host, _, port = self.listening.__dict__["address"].rpartition(":")
        return host, int(port)


@asynccontextmanager
async def running_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, **overrides: Any
) -> AsyncIterator[Running]:
    """Run the gateway until the block ends, then stop it by its SIGTERM handler.

    Plaintext inside the mesh (no Consul agent here); ``overrides`` are GatewaySettings fields.
    """
    loop = asyncio.get_running_loop()
    handlers: dict[int, Callable[[], None]] = {}
    installed = asyncio.Event()

    def add_signal_handler(signum: int, callback: Callable[[], None]) -> None:
        handlers[signum] = callback
        if len(handlers) == 2:
            installed.set()

    monkeypatch.setattr(loop, "add_signal_handler", add_signal_handler)
    caplog.set_level(logging.INFO, logger="gateway")
    _, public = generate_keypair(tmp_path)
    fields: dict[str, Any] = {
        "port": 0,
        "grace_seconds": 0.5,
        "jwt": JwtSettings(public_keys={"k": public.read_text()}),
        "security": SecuritySettings(insecure=True),
        **overrides,
    }
    settings = GatewaySettings(**fields)
    task = asyncio.create_task(entry.run(settings))
    ready = asyncio.create_task(installed.wait())
    await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # run() failed before listening: show why
    [listening] = [r for r in caplog.records if r.getMessage() == "gateway listening"]
    running = Running(settings, task, handlers, listening)
    try:
        yield running
    finally:
        if not task.done():
            handlers[signal.SIGTERM]()
            await asyncio.wait_for(task, 10)
