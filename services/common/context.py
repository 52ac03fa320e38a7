"""The part of a call's grpc.aio servicer context the shop's code uses, as a Protocol.

grpc has no types mypy reads (``follow_imports = "skip"`` in pyproject.toml), so
``grpc.aio.ServicerContext`` is ``Any`` to it and an annotation naming it checks nothing: a
misspelt method (``context.timeremaining()``) would only fail when the call runs. Servicers,
the authenticator and the error interceptor take this :class:`Context` instead; the context
grpc.aio passes satisfies it, and tests may pass any object that does.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NoReturn, Protocol

import grpc

Metadata = Collection[tuple[str, str | bytes]]
"""Metadata as grpc.aio gives and takes it: ``grpc.aio.Metadata`` or a sequence of pairs."""


class Context(Protocol):
    """A call as its handler sees it: who sent it, from where, how long it may take, abort."""

    def invocation_metadata(self) -> Metadata | None: ...

    def peer(self) -> str: ...

    def time_remaining(self) -> float | None:
        """Seconds until the caller's deadline; None when the call has none."""
        ...

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Metadata = ()
    ) -> NoReturn: ...
