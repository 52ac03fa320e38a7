"""A service's UNAVAILABLE names the dependency only; what the transport said stays in the logs.

CreateOrder answered ``user service is unavailable: UNAVAILABLE: failed to connect to all
addresses; last error: UNKNOWN: ipv4:127.0.0.1:50052 ...`` as a rich status, which the
gateway rightly relays as the service's own answer: the client saw a peer address and
grpc-core's words.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import pytest

from mesh.errors import DependencyUnavailable
from services.common.errors import StatusInterceptor, to_status

DETAIL = "UNAVAILABLE: failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50052: refused"


def test_the_status_names_the_dependency_only() -> None:
    status = to_status(DependencyUnavailable("user service", DETAIL))
    assert status.code is grpc.StatusCode.UNAVAILABLE
    assert status.details == "user service is unavailable"


class _Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", "req-42"),)

    async def abort(self, code: grpc.StatusCode, details: str, trailers: Any = None) -> None:
        raise RuntimeError(details)


async def test_the_detail_is_logged_with_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(request: Any, context: Any) -> Any:
        raise DependencyUnavailable("user service", DETAIL)

    wrapped = StatusInterceptor().wrap_handler(
        "/shop.Test/Call", grpc.unary_unary_rpc_method_handler(handler)
    )
    caplog.set_level(logging.WARNING)
    with pytest.raises(RuntimeError, match=r"^user service is unavailable$"):
        await wrapped.unary_unary(b"", _Context())
    record = next(r for r in caplog.records if r.getMessage() == "dependency unavailable")
    assert getattr(record, "detail", "") == DETAIL and getattr(record, "request_id", "") == "req-42"
