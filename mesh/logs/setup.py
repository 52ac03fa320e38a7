"""JSON log lines, one object per line, so logs from many processes can be merged and searched.

Configured once per process by :func:`configure_logging` from ``__main__``; the level comes
from the settings (``MESH_LOG_LEVEL``), never from a module-level global. Every line written
while a sampled span is current carries its ``trace_id`` and ``span_id`` (hex, as trace
backends show them), so any log line can be joined to its trace.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def trace_ids() -> dict[str, str]:
    """``trace_id``/``span_id`` of the current span, or nothing when no span is recording."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object; ``extra=`` fields become top-level keys."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service
        self._second = -1
        self._second_text = ""

    def timestamp(self, created: float) -> str:
        """``created`` as ISO 8601 UTC to the millisecond (``2026-12-06T00:01:52.123+00:00``).

        The date and time of day are formatted once per second, not once per line: a busy
        server writes a line per call. Called under the handler's lock.
        """
        second = int(created)
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        entry = self._head(record.created, record.levelname.lower(), record.name, record.getMessage())
        if "trace_id" not in vars(record):
            entry.update(trace_ids())
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)

    def line(self, created: float, level: int, logger: str, msg: str, fields: dict[str, Any]) -> str:
        """The line :meth:`format` writes for a record with these fields as its ``extra``
        (flat values: no check for a structure that contains itself)."""
        entry = self._head(created, _LEVEL_NAMES[level], logger, msg)
        entry.update(fields)
        return _encode_flat(entry)

    def _head(self, created: float, level: str, logger: str, msg: str) -> dict[str, Any]:
        return {
            "ts": self.timestamp(created),
            "level": level,
            "service": self._service,
            "logger": logger,
            "msg": msg,
        }


def _flat_encoder() -> Callable[[dict[str, Any]], str]:
    """``json.dumps(value, default=str)``'s output from one C encoder made once.

    ``json.dumps`` with ``default=`` builds a new encoder, and its C scanner, for every call:
    a third of a line's cost when a server writes a line per call.
    """
    make = getattr(json.encoder, "c_make_encoder", None)  # not in the stubs
    if make is None:  # a Python without the C accelerator
        return lambda value: json.dumps(value, default=str)
    chunks = make(None, str, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True)
    return lambda value: "".join(chunks(value, 0))


_encode_flat = _flat_encoder()

_LEVEL_NAMES = {
    level: logging.getLevelName(level).lower()
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)
}


class JsonLineHandler(logging.StreamHandler[TextIO]):
    """The process's log handler (:func:`configure_logging`): each record as one JSON line.

    :meth:`write` also takes a line's fields directly: the RPC log (one line per call, so a
    busy server's hottest logging) skips building a ``LogRecord`` (about 30 attributes, a
    thread and process lookup, a path split) when this handler is the only one its record
    would reach (:func:`direct_handler`); the line is the same.
    """

    def __init__(self, service: str, stream: TextIO) -> None:
        super().__init__(stream)
        self.json = JsonFormatter(service)
        self.setFormatter(self.json)

    def write(self, level: int, logger: str, msg: str, fields: dict[str, Any]) -> None:
        """Write the line a record of ``logger`` at ``level`` with ``fields`` as its extra would be."""
        created = time.time()
        self.acquire()
        try:
            self.stream.write(self.json.line(created, level, logger, msg, fields) + self.terminator)
            self.flush()
        except Exception:
            record = logging.makeLogRecord({"name": logger, "levelno": level, "msg": msg, **fields})
            self.handleError(record)
        finally:
            self.release()


def direct_handler(logger: logging.Logger, level: int) -> JsonLineHandler | None:
    """The JsonLineHandler a record of ``logger`` at ``level`` would reach, when it is the only
    handler it would reach and nothing could filter or change it on the way; else None.

    Anything else configured (a test's capture handler, an extra handler, a filter) sends the
    record the usual way. A few attribute reads per call: logging is reconfigured at run time.
    """
    if logger.filters:
        return None
    found: logging.Handler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if found is not None:
                return None  # a second handler
            found = handler
        if not current.propagate:
            break
        current = current.parent
    if type(found) is not JsonLineHandler or found.filters or level < found.level:
        return None
    return found


def configure_logging(service: str, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every log record of this process to ``stream`` (stderr) as JSON lines."""
    handler = JsonLineHandler(service, stream or sys.stderr)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
