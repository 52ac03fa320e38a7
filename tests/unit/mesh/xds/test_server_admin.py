"""The xDS admin endpoint over a real socket: JSON for known paths, 404/405 otherwise."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from mesh.xds.admin import AdminServer


async def get(port: int, path: str, method: str = "GET") -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)  # the server closes the connection
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert b"Content-Type: application/json" in head
    assert f"Content-Length: {len(body)}".encode() in head
    return status, json.loads(body)


async def test_routes_answer_json_and_the_rest_is_refused() -> None:
    clients = [{"stream": 1, "node": {"id": "local-client"}}]
    admin = AdminServer({"/clients": lambda: clients, "/healthz": lambda: {"status": "ok"}})
    port = await admin.start()
    try:
        assert await get(port, "/clients") == (200, clients)
        assert await get(port, "/healthz?verbose=1") == (200, {"status": "ok"})
        status, body = await get(port, "/nothing")
        assert status == 404 and body["paths"] == ["/clients", "/healthz"]
        assert (await get(port, "/clients", "POST"))[0] == 405
    finally:
        await admin.close()


def test_a_failing_route_is_a_500_and_a_malformed_line_a_400() -> None:
    admin = AdminServer({"/boom": lambda: 1 / 0})
    assert admin.answer("GET /boom HTTP/1.1\r\n")[0] == 500
    assert admin.answer("garbage\r\n")[0] == 400


async def test_an_endless_line_is_a_400_and_the_endpoint_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = AdminServer({"/healthz": lambda: {"status": "ok"}})
    port = await admin.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /" + b"a" * 200_000)  # no end of line, past the 64 KiB limit
        await writer.drain()
        try:
            raw = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:  # answered and closed with the rest of our bytes unread
            raw = b"HTTP/1.1 400 Bad Request (reset)"
        writer.close()
        assert raw.startswith(b"HTTP/1.1 400 Bad Request")
        assert await get(port, "/healthz") == (200, {"status": "ok"})
        # Refused as a bad request, not as an exception escaping the connection handler.
        assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.records
    finally:
        await admin.close()
