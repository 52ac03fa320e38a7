"""The HTTP server against hostile clients: slow headers, too many connections, odd request lines.

Everything here is bytes sent to a server on 127.0.0.1; the loops are bounded by count and the
waits by ``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from gateway.http import Request, Response
from gateway.server import HttpServer, ServerLimits
from tests.unit.gateway.test_server import exchange, read_response


async def handler(request: Request) -> Response:
    return Response(200, json.dumps({"path": request.path}).encode())


async def until(predicate: object, within: float = 5.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)  # poll interval


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = HttpServer(handler, ServerLimits())
    bound = await server.start("127.0.0.1", 0)
    yield bound
    await server.close(1.0)


# -- the request line ---------------------------------------------------------------------


async def test_a_request_line_without_an_http_version_is_400(port: int) -> None:
    [(status, headers, body)] = await exchange(port, b"GET /v1/products\r\n\r\n")
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["code"] == 3


@pytest.mark.parametrize("host", [b"example.com", b"127.0.0.1"])
async def test_an_absolute_form_target_is_400_whatever_host_it_names(port: int, host: bytes) -> None:
    request = b"GET http://" + host + b"/v1/products HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    [(status, headers, body)] = await exchange(port, request)
    assert status == 400 and headers["connection"] == "close"
    assert "origin-form" in json.loads(body)["message"]


async def test_an_http_version_other_than_1_x_is_505(port: int) -> None:
    [(status, _, _)] = await exchange(port, b"GET /v1/products HTTP/2.0\r\nHost: h\r\n\r\n")
    assert status == 505


async def test_http_1_0_and_origin_form_are_still_served(port: int) -> None:
    [(status, _, body)] = await exchange(port, b"GET /v1/products?x=1 HTTP/1.0\r\n\r\n")
    assert status == 200 and json.loads(body) == {"path": "/v1/products"}


# -- slow clients -------------------------------------------------------------------------


async def test_a_client_trickling_header_lines_is_cut_off_at_the_header_timeout() -> None:
    server = HttpServer(handler, ServerLimits(header_timeout_seconds=0.5, keepalive_seconds=30))
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nHost: h\r\n")
        started = time.monotonic()

        async def trickle() -> None:  # one header line every 150 ms, for at most 4.5 s
            for line in range(30):
                await asyncio.sleep(0.15)
                if writer.is_closing() or reader.at_eof():
                    return
                writer.write(b"X-Slow-%d: y\r\n" % line)

        sender = asyncio.create_task(trickle())
        try:
            status, headers, _ = await read_response(reader)
            assert status == 408 and headers["connection"] == "close"
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            sender.cancel()
            writer.close()
        assert time.monotonic() - started < 2.5  # the timeout (0.5 s) and one sweep, not the trickle
        await until(lambda: server.open_connections == 0)
    finally:
        await server.close(1.0)


async def test_a_connection_that_never_sends_a_request_is_closed_at_the_header_timeout() -> None:
    server = HttpServer(handler, ServerLimits(header_timeout_seconds=0.3, keepalive_seconds=30))
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # nothing said, nothing answered
        writer.close()
        await until(lambda: server.open_connections == 0)
    finally:
        await server.close(1.0)


async def test_the_header_timeout_does_not_cut_an_idle_keep_alive_connection() -> None:
    server = HttpServer(handler, ServerLimits(header_timeout_seconds=0.2, keepalive_seconds=30))
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        await asyncio.sleep(0.6)  # idle between requests: the keep-alive timeout's business
        writer.write(b"GET /two HTTP/1.1\r\nHost: h\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 200 and json.loads(body)["path"] == "/two"
        writer.close()
    finally:
        await server.close(1.0)


# -- the connection cap -------------------------------------------------------------------


async def test_idle_connections_past_the_cap_do_not_pile_up_and_a_request_is_still_served() -> None:
    cap = 8
    server = HttpServer(
        handler, ServerLimits(max_connections=cap, header_timeout_seconds=30, keepalive_seconds=30)
    )
    port = await server.start("127.0.0.1", 0)
    idle: list[asyncio.StreamWriter] = []
    try:
        for _ in range(5 * cap):  # connections that never send a byte
            idle.append((await asyncio.open_connection("127.0.0.1", port))[1])
        await asyncio.sleep(0.1)  # let the server see every one of them
        assert server.open_connections <= cap
        [(status, _, body)] = await exchange(port, b"GET /normal HTTP/1.1\r\nHost: h\r\n\r\n")
        assert status == 200 and json.loads(body)["path"] == "/normal"
        assert server.open_connections <= cap
    finally:
        for writer in idle:
            writer.close()
        await server.close(1.0)


async def test_past_the_cap_of_busy_connections_a_new_one_is_refused_with_503() -> None:
    cap = 4
    server = HttpServer(
        handler, ServerLimits(max_connections=cap, header_timeout_seconds=30, keepalive_seconds=30)
    )
    port = await server.start("127.0.0.1", 0)
    slow: list[asyncio.StreamWriter] = []
    try:
        for _ in range(cap):  # each in the middle of its request head: not reclaimable
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /slow HTTP/1.1\r\nHost: h\r\n")
            slow.append(writer)
        await until(lambda: server.open_connections == cap)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            status, headers, body = await read_response(reader)
            assert status == 503 and headers["connection"] == "close" and "retry-after" in headers
            assert json.loads(body)["code"] == 14
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
        assert server.open_connections == cap
    finally:
        for writer in slow:
            writer.close()
        await server.close(1.0)
