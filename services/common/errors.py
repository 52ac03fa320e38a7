"""The shop's business errors and their translation into rich gRPC statuses.

Domain code raises these; :class:`StatusInterceptor` turns them into the status a client
needs: INVALID_ARGUMENT with ``google.rpc.BadRequest`` field violations, FAILED_PRECONDITION
with ``google.rpc.ErrorInfo`` naming the reason, UNAVAILABLE naming what is down (and only
that: the failure's detail is logged, never sent). Nothing a caller did wrong ever comes back
as INTERNAL.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from mesh.errors import DependencyUnavailable
from services.common.context import Context

log = logging.getLogger(__name__)

# An answer's status travels in the trailers, and a peer drops trailers above its metadata
# limit (8 KiB soft, 16 KiB hard in grpc-core), turning a clear refusal into a transport
# failure. Values quoted in messages are bounded (services/common/limits.py); these caps
# keep any status well inside the limit whatever a message or a request's size.
MAX_STATUS_MESSAGE = 1024  # UTF-8 bytes
MAX_VIOLATIONS = 20


class DomainError(Exception):
    """A request the rules refuse; ``code`` is the gRPC status it becomes."""

    code = grpc.StatusCode.UNKNOWN

    def details(self) -> list[Any]:
        """Protobuf messages to attach as google.rpc.Status details."""
        return []


class InvalidArgument(DomainError):
    """Malformed input: one (field, description) per violation."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Mapping[str, str] | list[tuple[str, str]]) -> None:
        listed = list(violations.items()) if isinstance(violations, Mapping) else list(violations)
        self.violations = listed[:MAX_VIOLATIONS]  # the first ones are enough to fix the request
        summary = "; ".join(f"{f}: {d}" for f, d in self.violations)
        super().__init__(f"invalid request: {summary}")

    def details(self) -> list[Any]:
        return [
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.violations
                ]
            )
        ]


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(DomainError):
    """The request is well formed but the current state refuses it (stock, decline, refusal)."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, reason: str, message: str, domain: str, **metadata: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.domain = domain
        self.metadata = metadata

    def details(self) -> list[Any]:
        return [error_details_pb2.ErrorInfo(reason=self.reason, domain=self.domain, metadata=self.metadata)]


def to_status(error: DomainError | DependencyUnavailable) -> grpc.Status:
    """A grpc.Status carrying google.rpc.Status (with details) in its trailing metadata."""
    details = (
        error.details()
        if isinstance(error, DomainError)
        else [
            error_details_pb2.ErrorInfo(
                reason="DEPENDENCY_UNAVAILABLE", domain="tsunagu", metadata={"name": error.name}
            )
        ]
    )
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    code = error.code.value[0] if isinstance(error.code, grpc.StatusCode) else code_pb2.UNKNOWN
    # A dependency's failure is named, never described: its detail is what a driver or
    # grpc-core said (peer addresses, library text) and goes to the log (_log_unavailable).
    message = f"{error.name} is unavailable" if isinstance(error, DependencyUnavailable) else str(error)
    encoded = message.encode()
    if len(encoded) > MAX_STATUS_MESSAGE:  # bytes: grpc-message percent-encodes non-ASCII
        message = encoded[: MAX_STATUS_MESSAGE - 3].decode(errors="ignore") + "…"
    return rpc_status.to_status(status_pb2.Status(code=code, message=message, details=packed))


async def abort_with(context: Context, error: DomainError | DependencyUnavailable) -> None:
    """Abort the call with the rich status of ``error`` (raises, as context.abort does)."""
    status = to_status(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


class StatusInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped (Any) for mypy
    """Translate DomainError and DependencyUnavailable raised by any handler into statuses."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        return self.wrap_handler(handler_call_details.method, await continuation(handler_call_details))

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler | None
    ) -> grpc.RpcMethodHandler | None:
        """``handler`` answering DomainError and DependencyUnavailable with their statuses."""
        if handler is None:
            return None
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: Context) -> Any:
        try:
            return await behaviour(request, context)
        except (DomainError, DependencyUnavailable) as error:
            if isinstance(error, DependencyUnavailable):
                _log_unavailable(error, context)
            await abort_with(context, error)

    return wrapped


def _streaming(behaviour: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            async for item in behaviour(request, context):
                yield item
        except (DomainError, DependencyUnavailable) as error:
            if isinstance(error, DependencyUnavailable):
                _log_unavailable(error, context)
            await abort_with(context, error)

    return wrapped


def _log_unavailable(error: DependencyUnavailable, context: Context) -> None:
    """The detail the client is not shown, with the request id the gateway sent."""
    request_id = next((str(v) for k, v in context.invocation_metadata() or () if k == "x-request-id"), "")
    log.warning(
        "dependency unavailable",
        extra={"dependency": error.name, "detail": error.detail or str(error), "request_id": request_id},
    )
