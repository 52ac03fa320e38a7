"""HTTP headers <-> gRPC metadata, deadlines, request ids and trace context.

Inbound, only what is named travels upstream: ``Grpc-Metadata-<key>`` headers (as ``<key>``),
the Authorization header (verified first by the auth backend), ``X-Request-Id`` and W3C
``traceparent``/``tracestate`` (passed on when well formed, created otherwise), and the
verified principal. Keys the gateway owns (authorization, the principal, grpc-*) cannot be
smuggled in as ``Grpc-Metadata-*``. Outbound, upstream metadata becomes a response header
only when its key is on the allow-list.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gateway.errors import bad_request
from mesh.connect.peer import PEER_HEADER
from mesh.identity import FORWARDED_CLIENT

METADATA_PREFIX = "grpc-metadata-"
REQUEST_ID = "x-request-id"
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
PRINCIPAL_SUBJECT = "x-principal-subject"
PRINCIPAL_ROLES = "x-principal-roles"
# Keys a client may not set through Grpc-Metadata-*: the gateway sets them (or gRPC does).
RESERVED_KEYS = frozenset(
    {
        "authorization",
        PRINCIPAL_SUBJECT,
        PRINCIPAL_ROLES,
        FORWARDED_CLIENT,  # the client's address is the gateway's word, never the client's
        PEER_HEADER,  # plaintext mode: the calling service's claim, the gateway's alone
        REQUEST_ID,
        TRACEPARENT,
        TRACESTATE,
        "content-type",
        "te",
        "user-agent",
        "host",
        "connection",
    }
)
_KEY = re.compile(r"[0-9a-z_.\-]{1,128}")
_ASCII_VALUE = re.compile(r"[\x20-\x7e]{0,4096}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}

Metadata = list[tuple[str, str | bytes]]


def new_request_id() -> str:
    return os.urandom(16).hex()


def request_id_from(value: str | None) -> str:
    """The client's X-Request-Id when it is a sane token, a fresh one otherwise."""
    if value is not None and _REQUEST_ID.fullmatch(value):
        return value
    return new_request_id()


def traceparent_from(value: str | None) -> str:
    """The client's traceparent when valid (W3C trace-context), else a new sampled one."""
    if value is not None:
        match = _TRACEPARENT.fullmatch(value.strip())
        if (
            match is not None
            and match.group(1) != "ff"
            and match.group(2) != "0" * 32
            and match.group(3) != "0" * 16
        ):
            return match.group(0)
    return f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-01"


def parse_grpc_timeout(value: str) -> float:
    """Seconds of a ``Grpc-Timeout`` header (``100m``, ``2S``...); 400 when malformed."""
    match = _TIMEOUT.fullmatch(value.strip())
    if match is None:
        raise bad_request("Grpc-Timeout must be 1-8 digits and a unit (H, M, S, m, u, n)", "Grpc-Timeout")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise bad_request("Grpc-Timeout must be positive", "Grpc-Timeout")
    return seconds


@dataclass(frozen=True)
class Inbound:
    """What the headers of one request contribute to the upstream call."""

    metadata: Metadata
    request_id: str
    timeout: float
    timeout_given: bool = False
    authorization: str | None = None
    content_type: str | None = None
    accept: str | None = None


def inbound(
    headers: Iterable[tuple[str, str]],
    default_timeout: float,
    max_timeout: float,
) -> Inbound:
    """Metadata, request id and deadline from the request headers (names lower-case)."""
    metadata: Metadata = []
    request_id: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    timeout = default_timeout
    timeout_given = False
    authorization = content_type = accept = None
    for name, value in headers:
        if name == "authorization":
            authorization = value
        elif name == "content-type":
            content_type = value
        elif name == "accept":
            accept = value
        elif name.startswith(METADATA_PREFIX):
            metadata.append(_metadata_entry(name[len(METADATA_PREFIX) :], value))
        elif name == REQUEST_ID:
            request_id = value
        elif name == TRACEPARENT:
            traceparent = value
        elif name == TRACESTATE:
            tracestate = value
        elif name == "grpc-timeout":
            timeout = min(parse_grpc_timeout(value), max_timeout)
            timeout_given = True
    rid = request_id_from(request_id)
    metadata.append((REQUEST_ID, rid))
    trace = traceparent_from(traceparent)
    metadata.append((TRACEPARENT, trace))
    if tracestate and trace == traceparent and _ASCII_VALUE.fullmatch(tracestate):
        metadata.append((TRACESTATE, tracestate))
    return Inbound(metadata, rid, timeout, timeout_given, authorization, content_type, accept)


def _metadata_entry(key: str, value: str) -> tuple[str, str | bytes]:
    if not _KEY.fullmatch(key) or key.startswith("grpc-") or key in RESERVED_KEYS:
        raise bad_request(
            f"Grpc-Metadata-{key[:64]} is not an allowed metadata key", f"Grpc-Metadata-{key[:64]}"
        )
    if key.endswith("-bin"):
        try:
            return key, base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"Grpc-Metadata-{key} must be base64", f"Grpc-Metadata-{key}") from None
    if not _ASCII_VALUE.fullmatch(value):
        raise bad_request(f"Grpc-Metadata-{key} must be printable ASCII", f"Grpc-Metadata-{key}")
    return key, value


def outbound(
    allow: frozenset[str], *groups: Sequence[tuple[str, str | bytes]] | None
) -> list[tuple[str, str]]:
    """Allow-listed upstream metadata as ``Grpc-Metadata-<key>`` response headers."""
    headers: list[tuple[str, str]] = []
    if not allow:
        return headers
    for group in groups:
        for key, value in group or ():
            if key in allow:
                text = base64.b64encode(value).decode() if isinstance(value, bytes) else value
                headers.append((f"grpc-metadata-{key}", text))
    return headers
