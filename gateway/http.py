"""The HTTP request and response values passed between the server and the gateway.

Plain slotted records, so the hot path allocates little: the server fills a
:class:`Request` from the parser callbacks; the gateway answers with a :class:`Response`
(bytes) or a :class:`StreamResponse` (an async iterator of chunks, for server streams).
Header names are lower-case; values are the raw header text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

JSON = "application/json"


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    client: str = ""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower-case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class StreamResponse:
    """A response sent as chunks while ``chunks`` yields them; ``close`` runs when it ends."""

    status: int
    chunks: AsyncIterator[bytes]
    content_type: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: Callable[[], None] | None = None


def media_types(accept: str | None) -> Iterable[str]:
    """The media types named in an Accept header, parameters dropped."""
    if not accept:
        return ()
    return (part.split(";", 1)[0].strip().lower() for part in accept.split(","))
