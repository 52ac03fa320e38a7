"""Two-stage exit on SIGTERM/SIGINT, as in grpclib: the first signal drains, the second exits.

A supervisor (``make run``'s Ctrl-C, an orchestrator's SIGTERM) gets a graceful stop; an
operator who signals again because something hangs gets an immediate exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

EXIT_ON_SECOND_SIGNAL = 130


def install_stop_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], Awaitable[None]]) -> None:
    """On the first SIGTERM/SIGINT run ``stop()``; on the second, exit the process at once."""
    tasks: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        if tasks:
            log.warning("second signal: exiting now", extra={"signal": signal.Signals(signum).name})
            os._exit(EXIT_ON_SECOND_SIGNAL)
        log.info("signal received: draining", extra={"signal": signal.Signals(signum).name})
        tasks.append(loop.create_task(_run(stop)))

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


async def _run(stop: Callable[[], Awaitable[None]]) -> None:
    await stop()
