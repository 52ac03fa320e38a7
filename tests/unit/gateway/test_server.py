"""The HTTP/1.1 server on its own: framing, keep-alive, pipelining, limits, streaming."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from gateway.http import Request, Response, StreamResponse
from gateway.server import HttpServer, ServerLimits


async def handler(request: Request) -> Response | StreamResponse:
    if request.path == "/stream":

        async def chunks() -> AsyncIterator[bytes]:
            for index in range(3):
                yield b'{"n":%d}\n' % index

        return StreamResponse(200, chunks(), "application/x-ndjson")
    body = {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "body": request.body.decode(),
    }
    return Response(200, json.dumps(body).encode())


@pytest.fixture
async def port() -> AsyncIterator[int]:
    server = HttpServer(
        handler, ServerLimits(max_header_bytes=2048, max_body_bytes=1024, keepalive_seconds=5)
    )
    bound = await server.start("127.0.0.1", 0)
    yield bound
    await server.close(1.0)


async def exchange(port: int, data: bytes, responses: int = 1) -> list[tuple[int, dict[str, str], bytes]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    out = []
    try:
        for _ in range(responses):
            out.append(await read_response(reader))
    finally:
        writer.close()
    return out


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    body = b""
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, headers, body
        body += chunk[:-2]


async def test_keep_alive_and_pipelining_answer_in_order(port: int) -> None:
    two = b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
    first, second = await exchange(port, two, responses=2)
    assert json.loads(first[2]) == {"method": "GET", "path": "/a", "query": "x=1", "body": ""}
    assert json.loads(second[2])["body"] == "hi" and second[0] == 200


async def test_chunked_request_body_is_decoded(port: int) -> None:
    request = (
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    [(status, _, body)] = await exchange(port, request)
    assert status == 200 and json.loads(body)["body"] == "abcde"


async def test_declared_oversized_body_is_413_before_reading_it(port: int) -> None:
    [(status, headers, body)] = await exchange(
        port, b"POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n"
    )
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["details"][0]["reason"] == "BODY_TOO_LARGE"


async def test_chunked_oversized_body_is_413(port: int) -> None:
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    request = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2 + b"0\r\n\r\n"
    [(status, _, _)] = await exchange(port, request)
    assert status == 413


async def test_oversized_headers_are_431(port: int) -> None:
    request = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"y" * 4000 + b"\r\n\r\n"
    [(status, _, body)] = await exchange(port, request)
    assert status == 431 and json.loads(body)["code"] == 3


async def test_malformed_request_is_400_and_closed(port: int) -> None:
    [(status, headers, _)] = await exchange(port, b"GARBAGE\x00 / HTTP/1.1\r\n\r\n")
    assert status == 400 and headers["connection"] == "close"


async def test_connection_close_is_honoured(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_expect_100_continue(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 100")
    writer.write(b"ok")
    status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body)["body"] == "ok"
    writer.close()


async def test_streaming_response_is_chunked(port: int) -> None:
    [(status, headers, body)] = await exchange(port, b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert headers["content-type"] == "application/x-ndjson"
    assert [json.loads(line)["n"] for line in body.splitlines()] == [0, 1, 2]


async def test_idle_keep_alive_connections_are_closed() -> None:
    server = HttpServer(handler, ServerLimits(keepalive_seconds=0.2))
    port = await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server when idle
        writer.close()
        assert server.open_connections == 0
    finally:
        await server.close(1.0)
