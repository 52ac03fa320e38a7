"""Server-streaming RPCs over HTTP/1.1: newline-delimited JSON, or server-sent events.

NDJSON follows grpc-gateway: one ``{"result": <message>}`` line per message and, when the
stream fails after it started, a last ``{"error": <google.rpc.Status>}`` line. With
``Accept: text/event-stream`` each message is an SSE ``message`` event and a failure an
``error`` event. The HTTP status is decided by the first message: a stream that fails before
sending anything is answered as a normal error (404 for someone else's order, and so on).
When the client goes away the upstream call is cancelled.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import Message

from gateway.errors import status_json, upstream_answer
from gateway.http import StreamResponse, media_types
from gateway.transcode import ResponseRenderer

NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"
_END = object()


def wants_sse(accept: str | None) -> bool:
    return EVENT_STREAM in media_types(accept)


class Encoder:
    def __init__(self, renderer: ResponseRenderer, sse: bool, upstream: str) -> None:
        self._renderer = renderer
        self.sse = sse
        self.upstream = upstream  # named in a transport failure's status, never grpc-core's text
        self.content_type = EVENT_STREAM if sse else NDJSON

    def message(self, message: Message) -> bytes:
        value = self._renderer.to_json_value(message)
        if self.sse:
            return b"event: message\ndata: " + _dumps(value) + b"\n\n"
        return _dumps({"result": value}) + b"\n"

    def error(self, error: grpc.aio.AioRpcError) -> bytes:
        body = status_json(upstream_answer(error, self.upstream).status)
        if self.sse:
            return b"event: error\ndata: " + body + b"\n\n"
        return b'{"error":' + body + b"}\n"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


async def open_stream(call: Any, encoder: Encoder, headers: list[tuple[str, str]]) -> StreamResponse:
    """Wait for the first message (or the end), then hand the rest over as a stream.

    Raises the call's AioRpcError when it fails before the first message, so the caller can
    answer with that status instead of a 200.
    """
    iterator = call.__aiter__()
    try:
        first: Any = await iterator.__anext__()
    except StopAsyncIteration:
        first = _END
    except BaseException:
        call.cancel()
        raise

    async def chunks() -> AsyncIterator[bytes]:
        if first is _END:
            return
        yield encoder.message(first)
        try:
            async for item in iterator:
                yield encoder.message(item)
        except grpc.aio.AioRpcError as error:
            yield encoder.error(error)

    return StreamResponse(200, chunks(), encoder.content_type, headers, close=call.cancel)
