"""OTLP/gRPC span export with spans written straight to protobuf bytes.

Why: the exporter's own encoder builds a protobuf message object for every span, attribute
and value (``ExportTraceServiceRequest`` → ``Span`` → ``KeyValue`` → ``AnyValue``) before
serializing them, about 30 us per span on this project's 2-core machine; every traced call
costs two spans (client and server), so encoding was a fifth of a traced one-row read.
:class:`SpanEncoder` writes the same wire bytes directly: the per-span fields by hand, each
attribute ``KeyValue`` from a memo of the bytes the exporter's encoder gives for that key and
value (a service repeats a few: its method names, codes, peers), resources and scopes once.
A span with events or links, rare here, is encoded by the exporter's encoder.

:class:`BytesOtlpSpanExporter` is the SDK's ``OTLPSpanExporter`` (endpoint, credentials,
headers, compression, retries, ``OTEL_EXPORTER_OTLP_*``) whose stub sends those bytes as they
are. It reaches into two attributes of the exporter's base class (``_stub``, ``_client``): the
exporter is pinned to one version (pyproject.toml), and tests/unit/mesh/test_otlp_encoding.py
checks the bytes against the exporter's own encoder and the export against a real receiver.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_instrumentation_scope,
    _encode_key_value,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import _encode_span
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind

_log = logging.getLogger(__name__)
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_KIND_NUMBERS = {  # opentelemetry.proto.trace.v1.Span.SpanKind
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
# Span.flags: bit 8 says whether bit 9 (the parent is remote) is known; the SDK always knows.
_FLAGS_KNOWN, _FLAGS_REMOTE = 0x100, 0x200
_MEMO_LIMIT = 4096
_MEMOIZED = frozenset((str, bool, int))  # values a memo can key on (not float: -0.0 == 0.0)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2): strings, bytes and messages."""
    size = len(payload)
    if number < 16 and size < 128:  # one byte of tag, one of length: most fields here
        return bytes((number << 3 | 2, size)) + payload
    if number < 16 and size < 16384:  # a span
        return bytes((number << 3 | 2, size & 0x7F | 0x80, size >> 7)) + payload
    return _varint(number << 3 | 2) + _varint(size) + payload


# The Span fields written by hand, each a tag (field number << 3 | wire type) and its value:
# trace_id (1, 16 bytes) and span_id (2, 8 bytes) big-endian; parent_span_id (4); kind (6,
# varint); start and end times (7 and 8, fixed64, little-endian); flags (16, fixed32).
_IDS = struct.Struct(">HQQHQ")
_PARENT = struct.Struct(">HQ")
_TIMES = struct.Struct("<BQBQ")
_TIME = struct.Struct("<BQ")
_LOW = (1 << 64) - 1
_KIND = {kind: bytes((0x30, number)) for kind, number in _KIND_NUMBERS.items()}
_FLAGS_LOCAL = b"\x85\x01" + _FLAGS_KNOWN.to_bytes(4, "little")
_FLAGS_FROM_REMOTE = b"\x85\x01" + (_FLAGS_KNOWN | _FLAGS_REMOTE).to_bytes(4, "little")


class SpanEncoder:
    """ReadableSpans to the bytes of an ``ExportTraceServiceRequest`` (see the module docstring)."""

    def __init__(self) -> None:
        self._attributes: dict[tuple[str, type, Any], bytes] = {}
        self._names: dict[str, bytes] = {}
        self._statuses: dict[tuple[int, str | None], bytes] = {}
        self._resources: dict[Resource, bytes] = {}
        self._scopes: dict[InstrumentationScope | None, bytes] = {}

    def request(self, spans: Sequence[ReadableSpan]) -> bytes:
        """One request: spans grouped by resource, then by instrumentation scope."""
        grouped: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
        resource: Resource | None = None
        scope: InstrumentationScope | None = None
        bucket: list[bytes] = []
        for span in spans:
            # Spans of one provider share their resource and scope objects: group by identity
            # first, as a Resource hashes by JSON-encoding its attributes.
            if span.resource is not resource or (span.instrumentation_scope or None) is not scope:
                resource, scope = span.resource, span.instrumentation_scope or None
                bucket = grouped.setdefault(resource, {}).setdefault(scope, [])
            bucket.append(self.span(span))
        out = []
        for resource, scopes in grouped.items():
            body = [self._resource(resource)]
            for scope, encoded in scopes.items():
                scope_spans = self._scope(scope) + b"".join(_field(2, span) for span in encoded)
                if scope is not None and scope.schema_url:
                    scope_spans += _field(3, scope.schema_url.encode())
                body.append(_field(2, scope_spans))
            if resource.schema_url:
                body.append(_field(3, resource.schema_url.encode()))
            out.append(_field(1, b"".join(body)))
        return b"".join(out)

    def span(self, span: ReadableSpan) -> bytes:
        """One ``Span`` message's bytes."""
        context = span.context
        if context is None or span.events or span.links or span.dropped_attributes:
            encoded: bytes = _encode_span(span).SerializeToString()
            return encoded
        trace_id = context.trace_id
        parts = [_IDS.pack(0x0A10, trace_id >> 64, trace_id & _LOW, 0x1208, context.span_id)]
        if context.trace_state:
            parts.append(_field(3, ",".join(f"{k}={v}" for k, v in context.trace_state.items()).encode()))
        parent = span.parent
        flags = _FLAGS_LOCAL
        if parent is not None:
            parts.append(_PARENT.pack(0x2208, parent.span_id))
            if parent.is_remote:
                flags = _FLAGS_FROM_REMOTE
        parts.append(self._name(span.name))
        parts.append(_KIND[span.kind])
        started, ended = span.start_time, span.end_time
        if started and ended:
            parts.append(_TIMES.pack(0x39, started, 0x41, ended))
        elif started or ended:
            parts.append(
                _TIMES.pack(0x39, started, 0x41, ended)[:9]
                if started
                else _TIMES.pack(0x39, 0, 0x41, ended)[9:]
            )
        attributes = span.attributes
        if attributes:
            memo = self._attributes
            for key, value in attributes.items():
                kind = value.__class__
                known = memo.get((key, kind, value)) if kind in _MEMOIZED else None
                parts.append(known or self._attribute(key, value))
        status = span.status
        if status is not None:
            parts.append(self._status(status.status_code.value, status.description))
        parts.append(flags)
        return b"".join(parts)

    def _attribute(self, key: str, value: Any) -> bytes:
        try:
            encoded = _field(9, _encode_key_value(key, value).SerializeToString())
        except Exception:  # as the exporter's encoder does: the attribute is left out, the span kept
            _log.exception("cannot encode span attribute %s", key)
            return b""
        if value.__class__ in _MEMOIZED:
            if len(self._attributes) >= _MEMO_LIMIT:
                self._attributes.clear()  # peers come and go: keep the memo bounded
            self._attributes[(key, value.__class__, value)] = encoded
        return encoded

    def _name(self, name: str) -> bytes:
        encoded = self._names.get(name)
        if encoded is None:
            if len(self._names) >= _MEMO_LIMIT:
                self._names.clear()
            encoded = self._names[name] = _field(5, name.encode()) if name else b""
        return encoded

    def _status(self, code: int, message: str | None) -> bytes:
        encoded = self._statuses.get((code, message))
        if encoded is None:
            body = (_field(2, message.encode()) if message else b"") + (
                b"\x18" + _varint(code) if code else b""
            )
            if len(self._statuses) >= _MEMO_LIMIT:
                self._statuses.clear()
            encoded = self._statuses[(code, message)] = _field(15, body)
        return encoded

    def _resource(self, resource: Resource) -> bytes:
        encoded = self._resources.get(resource)
        if encoded is None:
            encoded = self._resources[resource] = _field(1, _encode_resource(resource).SerializeToString())
        return encoded

    def _scope(self, scope: InstrumentationScope | None) -> bytes:
        encoded = self._scopes.get(scope)
        if encoded is None:
            message = _encode_instrumentation_scope(scope)  # type: ignore[arg-type]  # it takes None too
            encoded = self._scopes[scope] = _field(1, message.SerializeToString())
        return encoded


class _BytesTraceStub:
    """The trace service's stub, sending a request that is already bytes."""

    def __init__(self, channel: Any) -> None:
        self.Export = channel.unary_unary(
            EXPORT,
            request_serializer=None,  # bytes go out as they are
            response_deserializer=ExportTraceServiceResponse.FromString,
            _registered_method=True,
        )


class BytesOtlpSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/gRPC span exporter, encoding with :class:`SpanEncoder`."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._encoder = SpanEncoder()
        self._stub = _BytesTraceStub  # used again when the exporter reconnects
        self._client = _BytesTraceStub(self._channel)  # type: ignore[assignment]  # duck-typed stub

    def _translate_data(self, data: Sequence[ReadableSpan]) -> bytes:  # type: ignore[override]  # bytes, sent as they are
        return self._encoder.request(data)
