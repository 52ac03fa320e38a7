"""Registration discloses no account: a taken email is answered like a
registration (a new-looking account, nothing about the existing one), and a signup request_id
replayed with another body is refused without the account it created."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shop.user.v1 import user_pb2 as pb
from shop.user.v1 import user_pb2_grpc
from tests.conftest import StartService


@pytest.fixture
async def stub(start_service: StartService) -> AsyncIterator[user_pb2_grpc.UserServiceStub]:
    service = start_service("user")
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield user_pb2_grpc.UserServiceStub(channel)


def signup(
    email: str, password: str = "correct horse", name: str = "Ada", request_id: str = ""
) -> pb.CreateUserRequest:
    return pb.CreateUserRequest(email=email, password=password, display_name=name, request_id=request_id)


async def test_a_taken_email_is_answered_like_a_registration(stub: user_pb2_grpc.UserServiceStub) -> None:
    ada = (await stub.CreateUser(signup("ada@example.com", request_id="reg-ada"))).user
    for request in (
        signup("ADA@example.com", "other horse 7", "Mallory"),
        signup("ada@example.com", "other horse 7", "Mallory", request_id="reg-mallory"),
    ):
        answer = (await stub.CreateUser(request)).user
        assert answer.user_id.startswith("usr_") and answer.user_id != ada.user_id
        assert (answer.email, answer.display_name) == ("ada@example.com", "Mallory")
        assert list(answer.roles) == [pb.ROLE_CUSTOMER]
    # A re-send of that answer's request is answered the same way as a real account's re-send.
    replayed = (
        await stub.CreateUser(signup("ada@example.com", "other horse 7", "Mallory", request_id="reg-mallory"))
    ).user
    assert replayed == answer
    # The existing account is untouched: only its own password logs in.
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await stub.Login(pb.LoginRequest(email="ada@example.com", password="other horse 7"))
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    login = await stub.Login(pb.LoginRequest(email="ada@example.com", password="correct horse"))
    assert login.user_id == ada.user_id


async def test_a_replayed_signup_key_with_another_body_is_refused_without_the_account(
    stub: user_pb2_grpc.UserServiceStub,
) -> None:
    ada = (await stub.CreateUser(signup("ada@example.com", name="Ada Lovelace", request_id="reg-ada"))).user
    again = (await stub.CreateUser(signup("ada@example.com", name="Ada Lovelace", request_id="reg-ada"))).user
    assert again == ada
    for other in (
        signup("ada@example.com", "guessed horse", "Ada Lovelace", request_id="reg-ada"),
        signup("bob@example.com", "correct horse", "Ada Lovelace", request_id="reg-ada"),
        signup("ada@example.com", "correct horse", "Someone", request_id="reg-ada"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CreateUser(other)
        error = refused.value
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS, error
        status = rpc_status.from_call(error)
        assert status is not None
        info = error_details_pb2.ErrorInfo()
        assert len(status.details) == 1 and status.details[0].Unpack(info)
        assert (info.reason, dict(info.metadata)) == ("IDEMPOTENCY_KEY_REUSED", {"request_id": "reg-ada"})
        text = f"{error.details()} {status}"
        assert ada.user_id not in text and "Lovelace" not in text and "ada@" not in text
