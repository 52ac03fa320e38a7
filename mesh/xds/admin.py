"""A tiny HTTP/1.1 JSON admin endpoint for the xDS server (stdlib asyncio, GET only).

Why not gRPC or a web framework: an operator (or a test) wants ``curl .../clients`` to see
which clients are connected and what they ACKed or rejected, and nothing more; a few lines of
asyncio do that without a dependency. Each request is answered and the connection closed.

Routes are given by the caller as ``path -> function returning JSON-ready data``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

Route = Callable[[], Any]
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}


class AdminServer:
    """Answers ``GET <path>`` with the JSON of ``routes[path]()``; 404/405 otherwise."""

    def __init__(self, routes: Mapping[str, Route], *, read_timeout: float = 5.0) -> None:
        self.routes = dict(routes)
        self.port = 0
        self._read_timeout = read_timeout
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port); returns the bound port."""
        self._server = await asyncio.start_server(self._handle, host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(self._read_timeout):
                    request_line = await reader.readline()
                    while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass  # headers: nothing here needs them
                status, body = self.answer(request_line.decode("latin-1"))
            except ValueError:  # a line past the stream's 64 KiB limit
                status, body = 400, {"error": "request line or header too long"}
            payload = json.dumps(body, indent=2).encode() + b"\n"
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + payload)
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def answer(self, request_line: str) -> tuple[int, Any]:
        """(status, JSON body) for one request line such as ``GET /clients HTTP/1.1``."""
        parts = request_line.split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return 400, {"error": "malformed request line"}
        method, target = parts[0], parts[1].split("?", 1)[0]
        route = self.routes.get(target)
        if route is None:
            return 404, {"error": f"no such path {target}", "paths": sorted(self.routes)}
        if method != "GET":
            return 405, {"error": "only GET is served"}
        try:
            return 200, route()
        except Exception:
            log.exception("admin route %s failed", target)
            return 500, {"error": "internal error"}
