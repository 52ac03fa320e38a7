"""Errors as HTTP sees them: ONE gRPC-code -> HTTP-status table and google.rpc.Status bodies.

Every error the gateway returns, its own (404, 405, 401, 413, 429...) or an upstream's, has
the same JSON shape: ``{"code": <grpc code number>, "message": ..., "details": [...]}``, the
proto3 JSON of ``google.rpc.Status``, with the upstream's details (BadRequest field
violations, ErrorInfo...) decoded from ``grpc-status-details-bin``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2  # error_details registers the detail types

log = logging.getLogger(__name__)

ERROR_DOMAIN = "gateway.tsunagu"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

# grpc-gateway's mapping (DESIGN §6). Rows that surprise people carry the reason.
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

_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status of a gRPC code (500 for a code the table does not know)."""
    return HTTP_STATUS.get(code, 500)


def code_from_number(number: int) -> grpc.StatusCode:
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


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
                        field=field, description=description or message
                    )
                ]
            )
        )
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, message, details=details)


def status_from_rpc_error(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """google.rpc.Status of a failed call: the rich one from trailers when it is consistent."""
    code = error.code()
    number = code.value[0] if isinstance(code, grpc.StatusCode) else 2
    message = error.details() or ""
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            rich = status_pb2.Status()
            try:
                rich.ParseFromString(value)
            except DecodeError:
                break
            if rich.code == number:
                return rich
            break
    return status_pb2.Status(code=number, message=message)


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
