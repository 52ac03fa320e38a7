"""The status table, error bodies, header handling and the token bucket."""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway.errors import HTTP_STATUS, GatewayError, status_json
from gateway.headers import inbound, outbound, parse_grpc_timeout, traceparent_from
from gateway.limits import TokenBucketLimiter, too_many_requests

TABLE = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
}


def test_status_table_is_grpc_gateways() -> None:
    assert {code.name: status for code, status in HTTP_STATUS.items()} == TABLE
    assert set(HTTP_STATUS) == set(grpc.StatusCode)


def test_status_body_carries_details() -> None:
    detail = any_pb2.Any()
    detail.Pack(
        error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field="email", description="bad")]
        )
    )
    unknown = any_pb2.Any(type_url="type.googleapis.com/x.Unknown", value=b"\x01")
    body = json.loads(status_json(status_pb2.Status(code=3, message="no", details=[detail, unknown])))
    assert body == {
        "code": 3,
        "message": "no",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": "email", "description": "bad"}],
            },
            {"@type": "type.googleapis.com/x.Unknown"},
        ],
    }


def test_gateway_error_override_keeps_the_grpc_code() -> None:
    error = GatewayError(grpc.StatusCode.UNIMPLEMENTED, "nope", http_status=405, reason="METHOD_NOT_ALLOWED")
    body = json.loads(status_json(error.status()))
    assert error.http_status == 405 and body["code"] == 12
    assert body["details"][0]["reason"] == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize(
    ("text", "seconds"), [("1S", 1.0), ("250m", 0.25), ("2M", 120.0), ("1H", 3600.0), ("5u", 5e-6)]
)
def test_grpc_timeout(text: str, seconds: float) -> None:
    assert parse_grpc_timeout(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "S", "123456789S", "1.5S", "-1S", "0S", "1s"])
def test_bad_grpc_timeout_is_400(text: str) -> None:
    with pytest.raises(GatewayError) as caught:
        parse_grpc_timeout(text)
    assert caught.value.http_status == 400


def test_inbound_headers_become_metadata() -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    head = inbound(
        [
            ("grpc-metadata-tenant", "acme"),
            ("grpc-metadata-blob-bin", "AAEC"),
            ("x-request-id", "req-1"),
            ("traceparent", parent),
            ("tracestate", "k=v"),
            ("grpc-timeout", "100S"),
            ("authorization", "Bearer t"),
            ("cookie", "ignored"),
        ],
        default_timeout=5.0,
        max_timeout=30.0,
    )
    assert dict(head.metadata) == {
        "tenant": "acme",
        "blob-bin": b"\x00\x01\x02",
        "x-request-id": "req-1",
        "traceparent": parent,
        "tracestate": "k=v",
    }
    assert head.timeout == 30.0 and head.timeout_given and head.authorization == "Bearer t"


def test_missing_or_bad_ids_are_created() -> None:
    head = inbound(
        [("x-request-id", "bad id\x01"), ("traceparent", "00-" + "0" * 32 + "-" + "1" * 16 + "-01")],
        5.0,
        30.0,
    )
    metadata = dict(head.metadata)
    assert head.request_id != "bad id\x01" and len(head.request_id) == 32
    assert metadata["traceparent"] != "00-" + "0" * 32 + "-" + "1" * 16 + "-01"
    assert traceparent_from(None).startswith("00-") and head.timeout == 5.0 and not head.timeout_given


@pytest.mark.parametrize(
    "header",
    [
        ("grpc-metadata-authorization", "Bearer smuggled"),
        ("grpc-metadata-x-principal-subject", "admin"),
        ("grpc-metadata-grpc-timeout", "1S"),
        ("grpc-metadata-UPPER", "x"),
        ("grpc-metadata-key", "caf\xe9"),
        ("grpc-metadata-key-bin", "!!!"),
    ],
)
def test_reserved_or_invalid_metadata_is_refused(header: tuple[str, str]) -> None:
    with pytest.raises(GatewayError) as caught:
        inbound([header], 5.0, 30.0)
    assert caught.value.http_status == 400


def test_response_metadata_allow_list() -> None:
    headers = outbound(frozenset({"x-shown"}), [("x-shown", "1"), ("x-hidden", "2")], [("x-shown", b"\x01")])
    assert headers == [("grpc-metadata-x-shown", "1"), ("grpc-metadata-x-shown", "AQ==")]
    assert outbound(frozenset(), [("x-shown", "1")]) == []


def test_token_bucket_per_key() -> None:
    now = [0.0]
    limiter = TokenBucketLimiter(rate_per_second=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    assert limiter.take("b") == 0.0  # another principal has its own bucket
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0


def test_token_bucket_is_bounded() -> None:
    now = [0.0]
    limiter = TokenBucketLimiter(rate_per_second=1.0, burst=1, max_keys=10, clock=lambda: now[0])
    for index in range(100):
        limiter.take(f"k{index}")
        now[0] += 0.01
    assert len(limiter) <= 10


def test_rate_limit_error_has_retry_after() -> None:
    error = too_many_requests(1.2)
    assert error.http_status == 429 and dict(error.headers)["retry-after"] == "2"
    assert json.loads(status_json(error.status()))["details"][0]["retryDelay"] == "1.200s"
