"""The user service as a real process, called through the generated stubs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from mesh.identity import JwtSettings
from mesh.verifier import JwtVerifier
from shop.user.v1 import user_pb2 as pb
from shop.user.v1 import user_pb2_grpc
from tests.conftest import StartService
from tests.support.processes import ROOT, free_port, service_env
from tests.support.tokens import KID, KeyPair

Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
async def stub(start_service: StartService) -> AsyncIterator[user_pb2_grpc.UserServiceStub]:
    service = start_service("user")
    async with grpc.aio.insecure_channel(service.address) as channel:
        yield user_pb2_grpc.UserServiceStub(channel)


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def field_violations(error: grpc.aio.AioRpcError) -> set[str]:
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    return {v.field for v in bad_request.field_violations}


async def register(stub: user_pb2_grpc.UserServiceStub, email: str, request_id: str = "") -> pb.User:
    reply = await stub.CreateUser(
        pb.CreateUserRequest(
            email=email, password="correct horse", display_name="Someone", request_id=request_id
        )
    )
    return reply.user


async def test_register_login_and_profile_access(
    stub: user_pb2_grpc.UserServiceStub, jwt_keys: KeyPair
) -> None:
    ada = await register(stub, "Ada@Example.com", request_id="reg-ada")
    assert ada.email == "ada@example.com" and list(ada.roles) == [pb.ROLE_CUSTOMER]
    assert (await register(stub, "ada@example.com", request_id="reg-ada")).user_id == ada.user_id
    bob = await register(stub, "bob@example.com")

    login = await stub.Login(pb.LoginRequest(email="ADA@example.com", password="correct horse"))
    assert login.token_type == "Bearer" and login.user_id == ada.user_id
    verifier = JwtVerifier(JwtSettings(public_keys={KID: jwt_keys.public.read_text()}))
    principal = verifier.verify(login.access_token)
    assert principal.subject == ada.user_id and principal.roles == frozenset({"customer"})
    assert login.expire_time.seconds > 0

    as_ada = bearer(login.access_token)
    own = await stub.GetUser(pb.GetUserRequest(user_id=ada.user_id), metadata=as_ada)
    assert own.user == ada
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await stub.GetUser(pb.GetUserRequest(user_id=bob.user_id), metadata=as_ada)
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stub.GetUser(pb.GetUserRequest(user_id="usr_nobody"), metadata=as_ada)
    assert other.value.code() == missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        await stub.GetUser(pb.GetUserRequest(user_id=ada.user_id))
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED

    as_admin = jwt_keys.metadata("usr_admin", ("admin", "customer"))
    assert (await stub.GetUser(pb.GetUserRequest(user_id=bob.user_id), metadata=as_admin)).user == bob
    as_service = jwt_keys.service_metadata("order")
    assert (await stub.GetUser(pb.GetUserRequest(user_id=bob.user_id), metadata=as_service)).user == bob

    renamed = await stub.UpdateUser(
        pb.UpdateUserRequest(
            user=pb.User(user_id=ada.user_id, display_name="Countess"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=as_ada,
    )
    assert renamed.user.display_name == "Countess"
    with pytest.raises(grpc.aio.AioRpcError) as not_hers:
        await stub.UpdateUser(
            pb.UpdateUserRequest(user=pb.User(user_id=bob.user_id, display_name="X")), metadata=as_ada
        )
    assert not_hers.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as bad_mask:
        await stub.UpdateUser(
            pb.UpdateUserRequest(
                user=pb.User(user_id=ada.user_id, display_name="X", email="new@example.com"),
                update_mask=field_mask_pb2.FieldMask(paths=["email"]),
            ),
            metadata=as_ada,
        )
    assert bad_mask.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(bad_mask.value) == {"update_mask.paths[0]"}

    with pytest.raises(grpc.aio.AioRpcError) as customer_list:
        await stub.ListUsers(pb.ListUsersRequest(), metadata=as_ada)
    assert customer_list.value.code() == grpc.StatusCode.PERMISSION_DENIED
    first = await stub.ListUsers(pb.ListUsersRequest(page_size=1), metadata=as_admin)
    rest = await stub.ListUsers(pb.ListUsersRequest(page_token=first.next_page_token), metadata=as_admin)
    assert [u.user_id for u in [*first.users, *rest.users]] == [ada.user_id, bob.user_id]
    assert rest.next_page_token == ""


async def test_bad_input_duplicates_and_wrong_credentials(stub: user_pb2_grpc.UserServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.CreateUser(pb.CreateUserRequest(email="not-an-email", password="short", display_name=""))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(bad.value) == {"email", "password", "display_name"}

    ada = await register(stub, "ada@example.com")
    # A taken email is answered like a registration, disclosing nothing (test_registration_privacy.py).
    assert (await register(stub, "ADA@example.COM")).user_id != ada.user_id

    with pytest.raises(grpc.aio.AioRpcError) as wrong_password:
        await stub.Login(pb.LoginRequest(email="ada@example.com", password="wrong horse"))
    with pytest.raises(grpc.aio.AioRpcError) as unknown_email:
        await stub.Login(pb.LoginRequest(email="nobody@example.com", password="correct horse"))
    assert wrong_password.value.code() == unknown_email.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong_password.value.details() == unknown_email.value.details()

    with pytest.raises(grpc.aio.AioRpcError) as empty_login:
        await stub.Login(pb.LoginRequest())
    assert field_violations(empty_login.value) == {"email", "password"}

    with pytest.raises(grpc.aio.AioRpcError) as forged:
        await stub.ListUsers(pb.ListUsersRequest(), metadata=bearer("not.a.token"))
    assert forged.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_refuses_to_start_without_a_private_key(jwt_keys: KeyPair, tmp_path: Path) -> None:
    env = service_env(
        {
            "MESH_PORT": str(free_port()),
            "MESH_DATA_DIR": str(tmp_path),
            "MESH_JWT_PUBLIC_KEY_FILE": str(jwt_keys.public),
            "MESH_JWT_KID": KID,
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "services.user"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "ConfigError" in done.stderr and "MESH_JWT_PRIVATE_KEY_FILE" in done.stderr
