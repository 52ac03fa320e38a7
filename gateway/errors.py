"""Errors as HTTP sees them: ONE gRPC-code -> HTTP-status table and google.rpc.Status bodies.

Every error the gateway returns, its own (404, 405, 401, 413, 429...) or an upstream's, has
the same JSON shape: ``{"code": <grpc code number>, "message": ..., "details": [...]}``, the
proto3 JSON of ``google.rpc.Status``, with the upstream's details (BadRequest field
violations, ErrorInfo...) decoded from ``grpc-status-details-bin``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2  # error_details registers the detail types

log = logging.getLogger(__name__)

ERROR_DOMAIN = "gateway.tsunagu"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

# grpc-gateway's mapping (runtime/errors.go). Rows that surprise people carry the reason.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    # 499 is nginx's "client closed request": the caller gave up, nobody failed.
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    # The deadline passed upstream: a gateway timeout, not the client's fault.
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    # UNAUTHENTICATED is 401 (the HTTP name "Unauthorized" means unauthenticated).
    grpc.StatusCode.UNAUTHENTICATED: 401,
    # Quota or rate exhausted: 429 Too Many Requests, not 503.
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    # 400, not 412: 412 is reserved for HTTP conditional headers (If-Match, If-Unmodified-Since).
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    # A concurrency conflict (transaction aborted): 409 Conflict, the client may retry.
    grpc.StatusCode.ABORTED: 409,
    # Out of range is bad input past the end (a page beyond the last): 400, not 416.
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    # Data loss is a server fault even though nothing is "internal" about it.
    grpc.StatusCode.DATA_LOSS: 500,
}

# Whose status is it? grpc-core makes statuses up on the client side (a connection refused,
# a deadline passed, trailers too large to receive: "Stream removed (received metadata size
# exceeds hard limit ...)" as RESOURCE_EXHAUSTED) and the upstream's gRPC runtime does too
# (an exception in a handler: UNKNOWN "Unexpected <class ...>: <its text>"). Such a status
# is a transport outcome, not the upstream's answer: relaying it would show the client
# grpc-core's internal text and, by the table above, call an upstream failure the client's
# own rate limit (429). A status is taken as the upstream's own answer when
#   * its trailers carry a google.rpc.Status with the same code (grpc-status-details-bin;
#     every shop service answers this way, services/common/errors.py), or
#   * its code is one the gRPC library never generates (gRPC's doc/statuscodes.md: only
#     the codes in LIBRARY_CODES below are), so only an application can have sent it.
# Otherwise the gateway answers in its own words, with an ErrorInfo naming the upstream and
# the code it saw: DEADLINE_EXCEEDED 504, UNAVAILABLE 503, CANCELLED 499, anything else 502
# Bad Gateway carrying UNAVAILABLE (gRPC's own HTTP mapping pairs 502 with UNAVAILABLE).
LIBRARY_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)
# code grpc-core made up -> (HTTP status, code answered, ErrorInfo reason, message template)
_TRANSPORT: dict[grpc.StatusCode, tuple[int, grpc.StatusCode, str, str]] = {
    grpc.StatusCode.DEADLINE_EXCEEDED: (
        504,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "UPSTREAM_TIMEOUT",
        "the {} service did not answer within the deadline",
    ),
    grpc.StatusCode.UNAVAILABLE: (
        503,
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
        "the {} service is unavailable; try again later",
    ),
    grpc.StatusCode.CANCELLED: (
        499,
        grpc.StatusCode.CANCELLED,
        "UPSTREAM_CANCELLED",
        "the call was cancelled",
    ),
}
_BAD_GATEWAY = (502, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_FAILED", "no usable answer from the {} service")


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status of a gRPC code (500 for a code the table does not know)."""
    return HTTP_STATUS.get(code, 500)


def printable(text: str) -> str:
    """``text`` safe to put in a google.rpc.Status: lone surrogates written as ``\\udXXX``.

    Error messages quote what the client sent (a field name, a value), and JSON escapes can
    make that a lone surrogate, which protobuf refuses to store: the answer to a bad request
    would itself fail. ASCII, the common case, passes through untouched.
    """
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class GatewayError(Exception):
    """An error answered by the gateway itself, rendered like an upstream status.

    ``http_status`` overrides the table only for answers HTTP has a more precise word for
    (405 with Allow, 413, 415, 431); the JSON body always carries the gRPC code.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        details: Sequence[Message] = (),
        http_status: int | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        message = printable(message)
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: list[Message] = list(details)
        if reason:
            self.details.append(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN))
        self.http_status = http_status or HTTP_STATUS.get(code, 500)
        self.headers = list(headers)

    def status(self) -> status_pb2.Status:
        packed = []
        for detail in self.details:
            holder = any_pb2.Any()
            holder.Pack(detail)
            packed.append(holder)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)


def bad_request(message: str, field: str = "", description: str = "") -> GatewayError:
    """INVALID_ARGUMENT (400) with a BadRequest field violation when a field is named."""
    details: list[Message] = []
    if field:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=printable(field), description=printable(description or message)
                    )
                ]
            )
        )
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, message, details=details)


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    """How a failed upstream call is answered: ``own`` when the status is the upstream's."""

    http_status: int
    status: status_pb2.Status
    own: bool


def upstream_answer(error: grpc.aio.AioRpcError, upstream: str) -> UpstreamAnswer:
    """The HTTP status and google.rpc.Status for a failed call to ``upstream`` (see above)."""
    code = error.code()
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    rich = _rich_status(error, code.value[0])
    if rich is not None:
        return UpstreamAnswer(HTTP_STATUS.get(code, 500), rich, own=True)
    if code not in LIBRARY_CODES:
        plain = status_pb2.Status(code=code.value[0], message=printable(error.details() or ""))
        return UpstreamAnswer(HTTP_STATUS.get(code, 500), plain, own=True)
    http, answered, reason, template = _TRANSPORT.get(code, _BAD_GATEWAY)
    info = error_details_pb2.ErrorInfo(
        reason=reason, domain=ERROR_DOMAIN, metadata={"upstream": upstream, "grpc_code": code.name}
    )
    holder = any_pb2.Any()
    holder.Pack(info)
    message = template.format(upstream)
    return UpstreamAnswer(
        http, status_pb2.Status(code=answered.value[0], message=message, details=[holder]), False
    )


def _rich_status(error: grpc.aio.AioRpcError, number: int) -> status_pb2.Status | None:
    """The google.rpc.Status in the trailers when there is one with the call's code."""
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            rich = status_pb2.Status()
            try:
                rich.ParseFromString(value)
            except DecodeError:
                return None
            return rich if rich.code == number else None
    return None


def retry_after(status: status_pb2.Status) -> list[tuple[str, str]]:
    """``Retry-After`` (whole seconds, at least 1) from an upstream's google.rpc.RetryInfo.

    An upstream that throttles (the user service's login throttle) says when to come back
    in a RetryInfo detail; HTTP clients read that from the header (RFC 9110 10.2.3).
    """
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Is(info.DESCRIPTOR) and detail.Unpack(info):
            seconds = info.retry_delay.ToNanoseconds() / 1e9
            return [("retry-after", str(max(1, math.ceil(seconds))))]
    return []


def status_json(status: status_pb2.Status) -> bytes:
    """The proto3 JSON of a google.rpc.Status; details of unknown types keep only @type."""
    body: dict[str, Any] = {"code": status.code, "message": status.message, "details": []}
    for detail in status.details:
        try:
            body["details"].append(json_format.MessageToDict(detail))
        except (TypeError, KeyError, json_format.SerializeToJsonError):
            body["details"].append({"@type": detail.type_url})
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def www_authenticate(realm: str, error: str = "", description: str = "") -> str:
    """RFC 6750 challenge; ``error="invalid_token"`` only when a token was sent."""
    value = f'Bearer realm="{realm}"'
    if error:
        value += f', error="{error}"'
    if description:
        clean = description.replace("\\", "").replace('"', "'")[:200]
        value += f', error_description="{clean}"'
    return value
