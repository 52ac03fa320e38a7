"""Login throttling in the user service: per source, per account, through the gateway and direct.

A user service with small limits (a source may fail 5 logins, an account 3) and a gateway in
front of it. Sources on loopback are told apart by binding the HTTP client to 127.0.0.2;
over gRPC, by the client address the gateway forwards (believed only from the gateway's mesh
identity: here, in plaintext mode, its ``x-mesh-peer: gateway`` claim). No assertion is about time: what is asserted is that a request is served
or refused, and that a refusal says when to come back.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shop.user.v1 import user_pb2 as pb
from shop.user.v1 import user_pb2_grpc
from tests.conftest import StartService
from tests.integration.gateway.conftest import GatewayProcess, start_gateway
from tests.support.processes import ServiceProcess, free_port
from tests.support.tokens import KeyPair

PASSWORD = "correct horse"
LIMITS = {
    "USER_LOGIN_SOURCE_BURST": "5",
    "USER_LOGIN_SOURCE_PER_SECOND": "0.01",  # no refill worth mentioning during a test
    "USER_LOGIN_ACCOUNT_FREE_FAILURES": "3",
    "USER_LOGIN_ACCOUNT_BACKOFF_SECONDS": "30",
    "USER_LOGIN_ACCOUNT_BACKOFF_MAX_SECONDS": "60",
}
FLOOD = 40  # wrong passwords sent by one client through the gateway
THREADS = 8


@pytest.fixture
def user_service(start_service: StartService) -> ServiceProcess:
    return start_service("user", **LIMITS)


@pytest.fixture
async def stub(user_service: ServiceProcess) -> AsyncIterator[user_pb2_grpc.UserServiceStub]:
    async with grpc.aio.insecure_channel(user_service.address) as channel:
        yield user_pb2_grpc.UserServiceStub(channel)


@pytest.fixture
def gateway(user_service: ServiceProcess, jwt_keys: KeyPair, tmp_path: Path) -> Iterator[GatewayProcess]:
    env = {
        f"GATEWAY_UPSTREAM_{name}": f"127.0.0.1:{free_port()}"
        for name in ("ORDER", "PAYMENT", "INVENTORY", "SHIPPING")
    }
    env.update(jwt_keys.env("gateway"))
    env.update(GATEWAY_UPSTREAM_USER=user_service.address, GATEWAY_RATE_LIMIT_PER_SECOND="0")
    started = start_gateway(tmp_path, env)
    yield started
    started.stop()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]


def login_over_http(port: int, email: str, password: str, source: str = "127.0.0.1") -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30, source_address=(source, 0))
    try:
        body = json.dumps({"email": email, "password": password})
        connection.request("POST", "/v1/users:login", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return Answer(response.status, headers, json.loads(response.read()))
    finally:
        connection.close()


async def register(stub: user_pb2_grpc.UserServiceStub, email: str) -> None:
    await stub.CreateUser(pb.CreateUserRequest(email=email, password=PASSWORD, display_name="Someone"))


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    """The google.rpc.RetryInfo delay of a RESOURCE_EXHAUSTED answer (fails when there is none)."""
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, error
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToNanoseconds() / 1e9
    raise AssertionError(f"no RetryInfo in {status}")


async def wrong_logins(
    stub: user_pb2_grpc.UserServiceStub,
    count: int,
    metadata: tuple[tuple[str, str], ...] = (),
    email: str = "",
) -> list[grpc.aio.AioRpcError]:
    """``count`` logins with a wrong password (a fresh email each unless one is given)."""
    errors = []
    for index in range(count):
        request = pb.LoginRequest(email=email or f"nobody{index}@example.com", password="wrong password")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Login(request, metadata=metadata)
        errors.append(caught.value)
    return errors


async def test_a_flood_through_the_gateway_gets_429_while_another_client_logs_in(
    gateway: GatewayProcess, stub: user_pb2_grpc.UserServiceStub
) -> None:
    await register(stub, "ada@example.com")
    with ThreadPoolExecutor(THREADS) as pool:
        flood = [
            pool.submit(login_over_http, gateway.port, f"guess{i}@example.com", "wrong password")
            for i in range(FLOOD)
        ]
        valid = login_over_http(gateway.port, "ada@example.com", PASSWORD, source="127.0.0.2")
        answers = [future.result() for future in flood]
    assert valid.status == 200, valid  # another client is served during the flood
    statuses = {a.status for a in answers}
    assert statuses <= {401, 429}, statuses
    refused = [a for a in answers if a.status == 429]
    assert len(refused) >= FLOOD - 5 - THREADS, statuses  # at most the burst (and races) got through
    for answer in refused:
        assert int(answer.headers["retry-after"]) >= 1
        assert answer.body["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        kinds = {d["@type"].rsplit("/", 1)[-1] for d in answer.body["details"]}
        assert "google.rpc.RetryInfo" in kinds


async def test_direct_grpc_is_throttled_and_a_forwarded_address_needs_the_gateways_identity(
    stub: user_pb2_grpc.UserServiceStub, jwt_keys: KeyPair
) -> None:
    await register(stub, "bob@example.com")
    # A direct caller naming a different client on every call is still one source: itself.
    spoofed = [(("x-forwarded-client", f"10.0.0.{i}"),) for i in range(8)]
    errors = [(await wrong_logins(stub, 1, metadata))[0] for metadata in spoofed]
    assert errors[0].code() is grpc.StatusCode.UNAUTHENTICATED
    assert errors[-1].code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay(errors[-1]) > 0
    # Another service's identity (even the trusted order service's) does not make it believed.
    other = (("x-forwarded-client", "10.0.9.9"), *jwt_keys.service_metadata("order"))
    (still,) = await wrong_logins(stub, 1, other)
    assert still.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    # The gateway's word is believed: a client it forwards is another source, served.
    reply = await stub.Login(
        pb.LoginRequest(email="bob@example.com", password=PASSWORD),
        metadata=jwt_keys.gateway_metadata("10.1.1.1"),
    )
    assert reply.access_token


async def test_the_account_backoff_holds_across_sources_and_ends_with_a_success(
    stub: user_pb2_grpc.UserServiceStub, jwt_keys: KeyPair
) -> None:
    await register(stub, "cy@example.com")
    answers = []
    for index in range(5):  # five wrong passwords, each from another client
        answers += await wrong_logins(stub, 1, jwt_keys.gateway_metadata(f"10.2.0.{index}"), "cy@example.com")
    codes = [error.code() for error in answers]
    assert codes[:3] == [grpc.StatusCode.UNAUTHENTICATED] * 3
    assert codes[3:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    # Even the right password, from a client never seen before, waits out the backoff.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Login(
            pb.LoginRequest(email="cy@example.com", password=PASSWORD),
            metadata=jwt_keys.gateway_metadata("10.2.9.9"),
        )
    assert 0 < retry_delay(caught.value) <= 30
    # Another account is not affected.
    await register(stub, "dee@example.com")
    reply = await stub.Login(
        pb.LoginRequest(email="dee@example.com", password=PASSWORD),
        metadata=jwt_keys.gateway_metadata("10.2.9.9"),
    )
    assert reply.access_token
