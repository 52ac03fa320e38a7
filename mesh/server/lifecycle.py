"""Hooks that run at the edges of a server's life.

Registration in a service registry is one such hook: it must run after the port is bound
(so the advertised port is real) and first during shutdown (so callers stop picking this
instance before it stops answering). Keeping that order in one place is what makes a rolling
restart lose no calls: deregister -> NOT_SERVING -> drain -> stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class BoundServer:
    """What a hook learns about the running server once its port is bound."""

    service_name: str
    host: str
    port: int
    hosted_services: tuple[str, ...]
    version: str
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)


class LifecycleHook(Protocol):
    """Called by :func:`mesh.server.serve` around the server's life."""

    async def on_started(self, server: BoundServer) -> None:
        """The server is bound and SERVING; publish it."""

    async def on_stopping(self) -> None:
        """Shutdown began; withdraw before health turns NOT_SERVING and in-flight calls drain."""
