"""The RPC log's direct path writes the line the logging path would, and only when it may.

A server writes one line per call, so the line skips building a LogRecord when the process's
JSON handler is the only place the record could go (mesh.logs.setup.direct_handler). Anything
else configured (a capture handler, a filter, a level) must see the record as before.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from mesh.logs.server import _LoggedCall
from mesh.logs.setup import JsonFormatter, JsonLineHandler, configure_logging, direct_handler
from mesh.rpc import Rpc

RPC = Rpc(
    "/shop.inventory.v1.InventoryService/GetProduct",
    "shop.inventory.v1.InventoryService",
    "GetProduct",
    "unary",
)


class Context:
    def peer(self) -> str:
        return 'ipv4:127.0.0.1:5555 "quoted"'


@pytest.fixture
def root_stream() -> Iterator[io.StringIO]:
    """The process's logging as configure_logging leaves it, writing to a buffer; restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("inventory", "INFO", stream)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def alone() -> None:
    """Take pytest's own capture handlers off the root logger for this test: with them there
    the record has another place to go, and the direct path rightly stands aside."""
    root = logging.getLogger()
    root.handlers[:] = [handler for handler in root.handlers if type(handler) is JsonLineHandler]


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_direct_line_is_the_line_the_record_would_make(root_stream: io.StringIO) -> None:
    alone()
    log = logging.getLogger("mesh.rpc")
    assert isinstance(direct_handler(log, logging.INFO), JsonLineHandler)
    _LoggedCall(log, RPC, Context()).done(grpc.StatusCode.OK)  # direct
    captured = io.StringIO()
    second = logging.StreamHandler(captured)  # a second handler: the record path
    second.setFormatter(JsonFormatter("inventory"))
    logging.getLogger().addHandler(second)
    assert direct_handler(log, logging.INFO) is None
    _LoggedCall(log, RPC, Context()).done(grpc.StatusCode.OK)
    direct, through_record, *_ = lines(root_stream)
    assert lines(captured) == [through_record]
    for line in (direct, through_record):
        line.pop("ts")
        line["duration_ms"] = 0
    assert direct == through_record
    assert list(direct) == list(through_record)  # the same keys in the same order
    assert direct["msg"] == "shop.inventory.v1.InventoryService/GetProduct OK"
    assert direct["level"] == "info" and direct["peer"] == 'ipv4:127.0.0.1:5555 "quoted"'


def test_a_failed_call_is_a_warning_line(root_stream: io.StringIO) -> None:
    alone()
    _LoggedCall(logging.getLogger("mesh.rpc"), RPC, Context()).done(grpc.StatusCode.UNAVAILABLE)
    (line,) = lines(root_stream)
    assert line["level"] == "warning" and line["code"] == "UNAVAILABLE"


def test_anything_that_could_filter_or_see_the_record_takes_the_logging_path(
    root_stream: io.StringIO,
) -> None:
    alone()
    log = logging.getLogger("test.rpc.direct")
    handler = direct_handler(log, logging.INFO)
    assert isinstance(handler, JsonLineHandler)
    log.addFilter(lambda record: True)
    assert direct_handler(log, logging.INFO) is None
    log.filters.clear()
    handler.addFilter(lambda record: True)
    assert direct_handler(log, logging.INFO) is None
    handler.filters.clear()
    handler.setLevel(logging.WARNING)
    assert direct_handler(log, logging.INFO) is None
    assert direct_handler(log, logging.WARNING) is handler
    handler.setLevel(logging.NOTSET)
    log.propagate = False  # its record reaches no handler at all: logging's last resort decides
    try:
        assert direct_handler(log, logging.INFO) is None
        own = JsonLineHandler("x", io.StringIO())
        log.addHandler(own)
        assert direct_handler(log, logging.INFO) is own
        log.removeHandler(own)
    finally:
        log.propagate = True
    plain = logging.StreamHandler(io.StringIO())  # not the mesh's handler: formats its own way
    logging.getLogger().handlers[:] = [plain]
    assert direct_handler(log, logging.INFO) is None
