"""``python -m services.user.seed_admin`` as ``make run`` uses it: idempotent, then usable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from shop.user.v1 import user_pb2 as pb
from shop.user.v1 import user_pb2_grpc
from tests.conftest import StartService
from tests.support.processes import ROOT, service_env


def seed_admin(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.user.seed_admin"],
        cwd=ROOT,
        env=service_env({}, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_seed_twice_then_the_admin_logs_in_and_lists_users(
    start_service: StartService, postgres_dsn: str
) -> None:
    first = seed_admin(USER_DATABASE_URL=postgres_dsn)
    second = seed_admin(USER_DATABASE_URL=postgres_dsn)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert "admin account seeded: admin@example.com / change-me-admin" in first.stdout
    assert "admin account present: admin@example.com / change-me-admin" in second.stdout

    service = start_service("user", USER_DATABASE_URL=postgres_dsn)
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = user_pb2_grpc.UserServiceStub(channel)
        login = await stub.Login(pb.LoginRequest(email="admin@example.com", password="change-me-admin"))
        listed = await stub.ListUsers(
            pb.ListUsersRequest(), metadata=(("authorization", f"Bearer {login.access_token}"),)
        )
    assert [u.email for u in listed.users] == ["admin@example.com"]
    assert set(listed.users[0].roles) == {pb.ROLE_ADMIN, pb.ROLE_CUSTOMER}


async def test_seed_uses_the_configured_account_and_data_dir(
    start_service: StartService, tmp_path: Path
) -> None:
    data_dir = str(tmp_path / "data")  # where start_service puts the service's SQLite file
    seeded = seed_admin(
        MESH_DATA_DIR=data_dir, MESH_ADMIN_EMAIL="Root@Shop.test", MESH_ADMIN_PASSWORD="s3cret-pass"
    )
    assert seeded.returncode == 0, seeded.stderr
    assert "root@shop.test / s3cret-pass" in seeded.stdout

    service = start_service("user")
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = user_pb2_grpc.UserServiceStub(channel)
        login = await stub.Login(pb.LoginRequest(email="root@shop.test", password="s3cret-pass"))
        assert login.user_id
        with pytest.raises(grpc.aio.AioRpcError) as default_admin:
            await stub.Login(pb.LoginRequest(email="admin@example.com", password="change-me-admin"))
        assert default_admin.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_seed_refuses_an_unusable_password(tmp_path: Path) -> None:
    refused = seed_admin(MESH_DATA_DIR=str(tmp_path), MESH_ADMIN_PASSWORD="short")
    assert refused.returncode == 2
    assert "password" in refused.stderr and "short" not in refused.stdout + refused.stderr
    assert not (tmp_path / "user.sqlite3").exists()
