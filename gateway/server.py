"""A lean HTTP/1.1 server: httptools' parser on an asyncio (uvloop) protocol, no ASGI layer.

Measured before choosing (bench/gateway.py, docs/benchmarks.md): the ASGI scope/receive/send dance
and its per-request dicts and coroutines cost more than the parsing itself, so the gateway
talks to the parser directly. What it does: keep-alive and pipelining (answered in order),
``Expect: 100-continue``, chunked request bodies (decoded by the parser), chunked streaming
responses with write flow control, limits enforced while parsing (431 for oversized
headers, 413 for an oversized body, before the body is read), idle keep-alive timeout, and
a graceful close (stop accepting, finish in-flight requests within the grace period).

Hostile clients are bounded too:

- a request head (request line and headers) must be complete within ``header_timeout_seconds``
  of its first byte, and a new connection must start its first request within that time:
  otherwise 408 (or, when nothing was sent, a plain close). A client trickling one header
  line at a time no longer keeps its connection, however regularly it writes;
- at most ``max_connections`` are open at once. A new connection past the cap first reclaims
  the longest-idle one (no request in progress: just accepted, or kept alive between
  requests), as nginx reuses its idle keep-alive connections; when every one is busy or
  mid-request, the new connection is answered 503 with Retry-After and closed at once;
- the request target must be in origin-form (``/path?query``): the absolute-form
  (``http://host/path``) is refused with 400 whatever host it names, since the gateway is an
  origin server, not a proxy (RFC 9112 3.2.2 asks servers to accept it; no client sends it to
  an origin server, and accepting it would make the gateway choose between two hosts);
  so is the asterisk-form. A request line without an HTTP version (HTTP/0.9) is 400, and a
  version other than 1.0 or 1.1 is 505.

Connections closed for these reasons are reported through ``on_close(reason)`` (``header_timeout``,
``over_capacity``, ``reclaimed_idle``) so the gateway can count them.

HTTPS: :meth:`HttpServer.start` takes an ``ssl.SSLContext`` (the gateway builds it from
``GATEWAY_TLS_CERT_FILE``/``GATEWAY_TLS_KEY_FILE``); the protocol then sees decrypted bytes
and every rule above applies unchanged. The TLS handshake, which happens before a connection
is handed to the protocol, must finish within ``header_timeout_seconds`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import grpc
import httptools

from gateway.errors import GatewayError, status_json
from gateway.http import Request, Response, StreamResponse

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response | StreamResponse]]

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_REASONS[499] = "Client Closed Request"
MAX_PIPELINED = 32
LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class ServerLimits:
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1024 * 1024
    keepalive_seconds: float = 75.0
    header_timeout_seconds: float = 10.0
    max_connections: int = 1024

    def __post_init__(self) -> None:
        if self.keepalive_seconds <= 0 or self.header_timeout_seconds <= 0:
            raise ValueError("keepalive_seconds and header_timeout_seconds must be > 0")
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")


OnClose = Callable[[str], None]


class _Reject(Exception):
    def __init__(self, error: GatewayError) -> None:
        self.error = error


_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode())
    return _date_cache[1]


def _head(status: int, content_type: str, headers: list[tuple[str, str]], keep_alive: bool) -> list[bytes]:
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Unknown").encode()),
        b"date: " + _date() + b"\r\n",
        b"content-type: " + content_type.encode() + b"\r\n",
    ]
    for name, value in headers:
        if "\r" in value or "\n" in value:
            continue
        lines.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
    if not keep_alive:
        lines.append(b"connection: close\r\n")
    return lines


def render_error(error: GatewayError) -> Response:
    return Response(error.http_status, status_json(error.status()), headers=list(error.headers))


class ServerState:
    """Connections of one server: for the sweeps, the connection cap and the graceful close."""

    def __init__(self, on_close: OnClose | None = None) -> None:
        self.connections: set[HttpProtocol] = set()
        # Connections with no request in progress, oldest first: the ones a new connection
        # past the cap may reclaim. A dict keeps insertion order; membership changes are O(1).
        self.idle: dict[HttpProtocol, None] = {}
        self.closing = False
        self.drained = asyncio.Event()
        self.on_close = on_close

    def sweep(self) -> None:
        """Close connections that stayed idle for a whole sweep period (no timer per request)."""
        for connection in list(self.connections):
            connection.idle_check()

    def sweep_heads(self, now: float, timeout: float) -> None:
        """Close connections whose request head has taken longer than ``timeout``."""
        for connection in list(self.connections):
            connection.head_check(now, timeout)

    def report(self, reason: str) -> None:
        if self.on_close is not None:
            self.on_close(reason)


class HttpProtocol(asyncio.Protocol):
    __slots__ = (
        "_activity",
        "_body",
        "_body_size",
        "_busy",
        "_client",
        "_discarding",
        "_drain",
        "_handler",
        "_head_since",
        "_header_bytes",
        "_headers",
        "_in_message",
        "_limits",
        "_loop",
        "_parser",
        "_queue",
        "_seen",
        "_state",
        "_task",
        "_transport",
        "_url",
        "_write_paused",
    )

    def __init__(self, handler: Handler, limits: ServerLimits, state: ServerState) -> None:
        self._handler = handler
        self._limits = limits
        self._state = state
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client = ""
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._queue: deque[tuple[Request, bool]] = deque()
        self._busy = False
        self._task: asyncio.Task[None] | None = None
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._activity = 0
        self._seen = -1
        self._discarding = False
        # When the head being read started (0.0: none is being read); _in_message while a
        # request's bytes are arriving (head or body), so it is not idle.
        self._head_since = 0.0
        self._in_message = False

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) else ""
        state = self._state
        if len(state.connections) >= self._limits.max_connections and not self._reclaim_one():
            self._refuse()
            return
        state.connections.add(self)
        state.idle[self] = None
        self._head_since = self._loop.time()  # the first request must start in time too

    def _reclaim_one(self) -> bool:
        """Close the longest-idle connection to make room; False when none is idle."""
        state = self._state
        victim = next(iter(state.idle), None)
        if victim is None:
            return False
        del state.idle[victim]
        state.connections.discard(victim)
        if victim._transport is not None:
            victim._transport.close()
        state.report("reclaimed_idle")
        return True

    def _refuse(self) -> None:
        """Answer 503 before reading anything and close: the server is at its connection cap."""
        self._discarding = True
        self._state.report("over_capacity")
        error = GatewayError(
            grpc.StatusCode.UNAVAILABLE,
            "too many open connections; retry shortly",
            reason="TOO_MANY_CONNECTIONS",
            headers=[("retry-after", "1")],
        )
        self._write(render_error(error), keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.connections.discard(self)
        self._state.idle.pop(self, None)
        if self._state.closing and not self._state.connections:
            self._state.drained.set()
        self._transport = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("client went away"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._activity += 1
        if self._discarding:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            cause = error.__context__
            if isinstance(cause, _Reject):
                self._fail(cause.error)
            else:
                self._fail(GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "malformed HTTP request"))
        except httptools.HttpParserUpgrade:
            self._fail(GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "protocol upgrades are not supported"))
        except httptools.HttpParserError:
            self._fail(GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "malformed HTTP request"))

    def _fail(self, error: GatewayError) -> None:
        """Answer a request that could not be parsed, then close (the stream is out of sync)."""
        transport = self._transport
        if transport is None:
            return
        self._queue.clear()
        self._head_since = 0.0
        self._state.idle.pop(self, None)
        if self._busy:  # a response is being produced: it cannot be interleaved; just close
            transport.close()
            return
        self._write(render_error(error), keep_alive=False, close=False)
        # Lingering close: the client may still be sending (a body we refused); closing with
        # unread input would reset the connection and lose the answer. Stop writing, drop
        # whatever still arrives, and close when the client does (or after a short while).
        self._discarding = True
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER_SECONDS, transport.close)

    def idle_check(self) -> None:
        """Called once per sweep: close when nothing arrived since the previous sweep."""
        if self._busy or self._transport is None:
            return
        if self._activity == self._seen:
            self._transport.close()
        self._seen = self._activity

    def head_check(self, now: float, timeout: float) -> None:
        """Called by the head sweep: 408 (or a plain close) when the head is overdue."""
        if self._busy or self._transport is None or not self._head_since:
            return
        if now - self._head_since <= timeout:
            return
        self._state.report("header_timeout")
        if self._in_message:
            self._fail(
                GatewayError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request headers not received within {timeout:g} s",
                    reason="HEADER_TIMEOUT",
                    http_status=408,
                )
            )
        else:  # a connection that never started a request: nothing to answer
            self._head_since = 0.0
            self._state.idle.pop(self, None)
            self._transport.close()

    def shutdown(self) -> None:
        """Close now if idle; otherwise after the response in flight."""
        if not self._busy and self._transport is not None:
            self._transport.close()

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._head_since = self._loop.time()
        self._state.idle.pop(self, None)
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._limits.max_header_bytes:
            raise _Reject(_too_large_headers(self._limits.max_header_bytes))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self._limits.max_header_bytes:
            raise _Reject(_too_large_headers(self._limits.max_header_bytes))
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._head_since = 0.0
        _check_request_line(self._parser.get_http_version(), self._url)
        length = -1
        expect = False
        for name, value in self._headers:
            if name == "content-length":
                length = int(value) if value.isdigit() else -1
            elif name == "expect" and value.lower() == "100-continue":
                expect = True
        if length > self._limits.max_body_bytes:
            raise _Reject(_too_large_body(self._limits.max_body_bytes))
        if expect and self._transport is not None and not self._busy:
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            raise _Reject(_too_large_body(self._limits.max_body_bytes))
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        url = httptools.parse_url(self._url)
        path = url.path.decode("latin-1") if url.path else "/"
        query = url.query.decode("latin-1") if url.query else ""
        method = self._parser.get_method().decode("ascii", "replace")
        body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
        request = Request(method, path, query, self._headers, body, self._client)
        keep_alive = bool(self._parser.should_keep_alive()) and not self._state.closing
        self._queue.append((request, keep_alive))
        if len(self._queue) > MAX_PIPELINED and self._transport is not None:
            self._transport.pause_reading()
        if not self._busy:
            self._busy = True
            self._task = self._loop.create_task(self._serve())

    # -- responding ------------------------------------------------------------------------

    async def _serve(self) -> None:
        try:
            while self._queue and self._transport is not None:
                request, keep_alive = self._queue.popleft()
                try:
                    response = await self._handler(request)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("unhandled error serving %s %s", request.method, request.path[:200])
                    response = render_error(GatewayError(grpc.StatusCode.INTERNAL, "internal gateway error"))
                keep_alive = keep_alive and not self._state.closing
                if isinstance(response, StreamResponse):
                    keep_alive = await self._stream(response, keep_alive)
                else:
                    self._write(response, keep_alive)
                if not keep_alive:
                    return
                if self._transport is not None and not self._queue:
                    self._transport.resume_reading()
        finally:
            self._busy = False
            self._task = None
            if self._state.closing and self._transport is not None:
                self._transport.close()
            elif (
                self._transport is not None
                and not self._transport.is_closing()
                and not self._in_message
                and not self._discarding
            ):
                self._state.idle[self] = None  # kept alive, waiting for the next request

    def _write(self, response: Response, keep_alive: bool, close: bool = True) -> None:
        transport = self._transport
        if transport is None:
            return
        lines = _head(response.status, response.content_type, response.headers, keep_alive)
        lines.append(b"content-length: %d\r\n\r\n" % len(response.body))
        lines.append(response.body)
        transport.write(b"".join(lines))
        if not keep_alive and close:
            transport.close()

    async def _stream(self, response: StreamResponse, keep_alive: bool) -> bool:
        """Send a chunked response; returns whether the connection may be reused."""
        try:
            transport = self._transport
            if transport is None:
                return False
            lines = _head(response.status, response.content_type, response.headers, keep_alive)
            lines.append(
                b"transfer-encoding: chunked\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n\r\n"
            )
            transport.write(b"".join(lines))
            async for chunk in response.chunks:
                if self._transport is None:
                    return False
                if chunk:
                    self._transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                if self._write_paused:
                    self._drain = self._loop.create_future()
                    await self._drain
            if self._transport is None:
                return False
            self._transport.write(b"0\r\n\r\n")
            if not keep_alive:
                self._transport.close()
            return keep_alive
        except ConnectionResetError:
            return False
        finally:
            if response.close is not None:
                response.close()


def _check_request_line(version: str, target: bytes) -> None:
    """Refuse what a lenient parser lets through: HTTP/0.9, other versions, non-origin-form targets."""
    if version not in ("1.1", "1.0"):
        if version.startswith("0."):
            raise _Reject(
                GatewayError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the request line has no HTTP version (HTTP/0.9 is not supported)",
                    reason="MALFORMED_REQUEST_LINE",
                )
            )
        raise _Reject(
            GatewayError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"HTTP/{version[:10]} is not supported: send HTTP/1.1",
                reason="HTTP_VERSION_NOT_SUPPORTED",
                http_status=505,
            )
        )
    if not target.startswith(b"/"):
        raise _Reject(
            GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the request target must be in origin-form (/path?query); the gateway is not a proxy",
                reason="MALFORMED_REQUEST_LINE",
            )
        )


def _too_large_headers(limit: int) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"request headers exceed {limit} bytes",
        reason="HEADERS_TOO_LARGE",
        http_status=431,
    )


def _too_large_body(limit: int) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"request body exceeds {limit} bytes",
        reason="BODY_TOO_LARGE",
        http_status=413,
    )


class HttpServer:
    """Listens on host:port and serves ``handler``; :meth:`close` drains gracefully."""

    def __init__(self, handler: Handler, limits: ServerLimits, on_close: OnClose | None = None) -> None:
        self._handler = handler
        self._limits = limits
        self._state = ServerState(on_close)
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._head_sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Listen (HTTPS when ``tls`` is given); returns the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpProtocol(self._handler, self._limits, self._state),
            host,
            port,
            backlog=1024,
            ssl=tls,
            ssl_handshake_timeout=self._limits.header_timeout_seconds if tls is not None else None,
        )
        self._schedule_sweep()
        return int(self._server.sockets[0].getsockname()[1])

    def _schedule_sweep(self) -> None:
        # A connection idle for one full period is seen twice unchanged: closed after
        # between one and two periods, i.e. roughly keepalive_seconds.
        period = self._limits.keepalive_seconds / 2

        def tick() -> None:
            self._state.sweep()
            if not self._state.closing:
                self._sweeper = asyncio.get_running_loop().call_later(period, tick)

        self._sweeper = asyncio.get_running_loop().call_later(period, tick)
        # Heads are checked against their start time, four times per timeout: an overdue head
        # is cut between 1 and 1.25 timeouts after its first byte.
        head_period = self._limits.header_timeout_seconds / 4
        timeout = self._limits.header_timeout_seconds

        def head_tick() -> None:
            loop = asyncio.get_running_loop()
            self._state.sweep_heads(loop.time(), timeout)
            if not self._state.closing:
                self._head_sweeper = loop.call_later(head_period, head_tick)

        self._head_sweeper = asyncio.get_running_loop().call_later(head_period, head_tick)

    @property
    def open_connections(self) -> int:
        return len(self._state.connections)

    async def close(self, grace: float) -> None:
        """Stop accepting; let in-flight requests finish within ``grace``; then cut the rest."""
        self._state.closing = True
        for sweeper in (self._sweeper, self._head_sweeper):
            if sweeper is not None:
                sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self._state.connections):
            connection.shutdown()
        if self._state.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._state.drained.wait(), grace)
        for connection in list(self._state.connections):
            transport = connection._transport
            if transport is not None:
                transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
