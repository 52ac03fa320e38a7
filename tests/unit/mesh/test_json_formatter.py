"""The JSON formatter's timestamp, formatted once per second, reads as datetime's own would."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from mesh.logs.setup import JsonFormatter


def test_timestamps_match_isoformat_across_seconds() -> None:
    formatter = JsonFormatter("probe")
    for created in (
        1_767_225_600.0,
        1_767_225_600.0015,
        1_767_225_600.999,
        1_767_225_601.25,
        1_767_225_600.5,
    ):
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert formatter.timestamp(created) == expected


def test_a_record_is_one_json_object_with_its_extra_fields() -> None:
    record = logging.makeLogRecord(
        {"name": "mesh.rpc", "levelno": logging.INFO, "levelname": "INFO", "msg": "a/b %s", "args": ("OK",)}
    )
    record.method = "GetProduct"
    line = json.loads(JsonFormatter("inventory").format(record))
    assert line["msg"] == "a/b OK" and line["service"] == "inventory" and line["method"] == "GetProduct"
    assert line["ts"] == datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
