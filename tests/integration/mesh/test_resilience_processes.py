"""Retries, breakers, the retry budget and deadline propagation against real processes.

Misbehaving participants are ``tests.support.fault_server`` processes: each counts the
attempts that reach it in a file, answers UNAVAILABLE while a ``down`` file exists, and can
sleep and record its cancellation. Clients are mesh channels configured by a policy file.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from mesh.channel import MeshChannel, mesh_channel
from mesh.health import wait_serving
from mesh.registry import StaticDiscovery
from mesh.resilience import State, load_policy
from shop.inventory.v1 import inventory_pb2 as inv
from shop.inventory.v1.inventory_pb2_grpc import InventoryServiceStub
from shop.order.v1 import order_pb2
from shop.order.v1.order_pb2_grpc import OrderServiceStub
from shop.payment.v1 import payment_pb2 as pay
from shop.payment.v1.payment_pb2_grpc import PaymentServiceStub
from shop.shipping.v1 import shipping_pb2 as ship
from shop.user.v1 import user_pb2
from shop.user.v1.user_pb2_grpc import UserServiceStub
from tests.conftest import StartService
from tests.support.processes import ROOT, free_port, service_env

INVENTORY = "shop.inventory.v1.InventoryService"
PAYMENT = "shop.payment.v1.PaymentService"


@dataclass
class Fault:
    """One fault_server process and the directory that steers and counts it."""

    directory: Path
    address: str
    process: subprocess.Popen[bytes]

    def attempts(self) -> int:
        path = self.directory / "count"
        return int(path.read_text()) if path.exists() else 0

    def down(self, is_down: bool) -> None:
        flag = self.directory / "down"
        if is_down:
            flag.touch()
        else:
            flag.unlink(missing_ok=True)

    def cancellations(self) -> list[float]:
        path = self.directory / "cancelled"
        return [float(line) for line in path.read_text().split()] if path.exists() else []

    def deadlines(self) -> list[float | None]:
        """``context.time_remaining()`` of every call as it arrived."""
        path = self.directory / "deadlines"
        lines = path.read_text().split() if path.exists() else []
        return [None if line == "None" else float(line) for line in lines]


@pytest.fixture
def faults(tmp_path: Path) -> Iterator[Callable[..., list[Fault]]]:
    started: list[Fault] = []

    def start_one(service: str, name: str, down: bool, sleep_ms: int, relay: str) -> Fault:
        directory = tmp_path / name
        directory.mkdir()
        port = free_port()
        env = service_env(
            {"MESH_PORT": str(port), "FAULT_SERVICE": service, "FAULT_DIR": str(directory)},
            FAULT_SLEEP_MS=str(sleep_ms),
            FAULT_RELAY_TO=relay,
        )
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fault_server"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        fault = Fault(directory, f"127.0.0.1:{port}", process)
        started.append(fault)
        fault.down(down)
        wait_serving(fault.address, process=process)
        return fault

    def start(service: str, *down: bool, sleep_ms: int = 0, relay: str = "") -> list[Fault]:
        names = [f"{service.rsplit('.', 1)[1]}-{len(started) + i}" for i in range(len(down))]
        with ThreadPoolExecutor(len(down)) as pool:
            return list(
                pool.map(
                    lambda a: start_one(service, a[0], a[1], sleep_ms, relay), zip(names, down, strict=True)
                )
            )

    yield start
    for fault in started:
        fault.process.kill()
        fault.process.wait()


def channel(tmp_path: Path, service: str, faults: list[Fault], policy: str) -> MeshChannel:
    path = tmp_path / "policy.toml"
    path.write_text(policy)
    settings = load_policy(path, {})
    return mesh_channel(service, StaticDiscovery({service: [f.address for f in faults]}), policy=settings)


async def test_one_bad_instance_of_three_costs_callers_nothing(tmp_path: Path, faults: Any) -> None:
    bad, *good = faults(INVENTORY, True, False, False)
    policy = """
[services.inventory.retry]
max_attempts = 3
initial_backoff = 0.005
max_backoff = 0.02
"""
    async with channel(tmp_path, "inventory", [bad, *good], policy) as mesh:
        stub = InventoryServiceStub(mesh)
        errors = 0
        for n in range(200):
            try:
                await stub.ReserveStock(inv.ReserveStockRequest(request_id=f"r{n}"), timeout=5)
            except grpc.aio.AioRpcError:
                errors += 1
    assert errors == 0
    assert bad.attempts() >= 1  # it was tried, and every one of those calls was retried elsewhere
    assert sum(f.attempts() for f in good) == 200


async def test_payment_breaker_opens_fails_fast_and_closes_on_recovery(tmp_path: Path, faults: Any) -> None:
    (payment,) = faults(PAYMENT, True)
    policy = """
[services.payment.breaker]
consecutive_failures = 5
open_wait = 1.0
"""
    async with channel(tmp_path, "payment", [payment], policy) as mesh:
        stub = PaymentServiceStub(mesh)
        request = pay.GetPaymentRequest(payment_id="p1")
        details = []
        for _ in range(8):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetPayment(request, timeout=5)
            details.append(raised.value.details())
        assert details == ["injected fault"] * 5 + ["circuit open for 'payment'"] * 3
        assert payment.attempts() == 5
        for _ in range(50):
            began = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.GetPayment(request, timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert raised.value.details() == "circuit open for 'payment'"
            assert time.monotonic() - began < 0.05  # failed fast, without the network
        assert payment.attempts() == 5  # nothing reached payment while the breaker was open
        assert mesh.resilience.breaker.snapshot().state is State.OPEN
        payment.down(False)
        deadline = time.monotonic() + 5
        while True:  # bounded by the open wait (1 s) plus a margin
            try:
                await stub.GetPayment(request, timeout=5)
                break
            except grpc.aio.AioRpcError as error:
                assert error.details() == "circuit open for 'payment'"
                assert time.monotonic() < deadline, "the breaker never closed"
                await asyncio.sleep(0.05)
        for _ in range(20):
            await stub.GetPayment(request, timeout=5)
        assert mesh.resilience.breaker.state is State.CLOSED
        assert payment.attempts() == 5 + 1 + 20
        assert mesh.resilience.transitions[("service", "open", "half_open")] >= 1


async def test_budget_bounds_attempts_on_a_dead_dependency(tmp_path: Path, faults: Any) -> None:
    (dead,) = faults(INVENTORY, True)
    policy = """
[services.inventory.retry]
max_attempts = 5
initial_backoff = 0.001
max_backoff = 0.002
[services.inventory.breaker]
failure_codes = ["DATA_LOSS"]   # keep the breaker shut: this test is about the budget alone
"""
    rate, duration = 50, 10.0
    async with channel(tmp_path, "inventory", [dead], policy) as mesh:
        stub = InventoryServiceStub(mesh)

        async def one(n: int) -> None:
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.ReserveStock(inv.ReserveStockRequest(request_id=f"b{n}"), timeout=5)

        began = time.monotonic()
        calls = []
        for n in range(int(rate * duration)):
            await asyncio.sleep(max(0.0, began + n / rate - time.monotonic()))
            calls.append(asyncio.ensure_future(one(n)))
        await asyncio.gather(*calls)
        requests = len(calls)
        assert mesh.resilience.budget_exhausted > 0
    attempts = dead.attempts()
    assert requests < attempts <= 1.2 * requests + 10 * duration, (requests, attempts)


def login(address: str, email: str) -> tuple[tuple[str, str], ...]:
    with grpc.insecure_channel(address) as insecure:
        users = UserServiceStub(insecure)
        users.CreateUser(
            user_pb2.CreateUserRequest(email=email, password="correct horse 9", display_name="Ada")
        )
        reply = users.Login(user_pb2.LoginRequest(email=email, password="correct horse 9"))
    return (("authorization", f"Bearer {reply.access_token}"),)


async def test_create_order_answers_by_its_deadline_and_the_saga_keeps_its_own(
    start_service: StartService, faults: Any
) -> None:
    (payment,) = faults(PAYMENT, False, sleep_ms=5000)
    names = ("user", "inventory", "shipping")
    extra = {"inventory": {"INVENTORY_SEED_DEMO": "1"}}
    with ThreadPoolExecutor(len(names)) as pool:
        started = dict(
            zip(names, pool.map(lambda n: start_service(n, **extra.get(n, {})), names), strict=True)
        )
    upstreams = {f"MESH_UPSTREAM_{n.upper()}": p.address for n, p in started.items()}
    # The order service's built-in 1.5 s per attempt would equal the caller's 1.5 s below;
    # a longer one (the operator's key wins) keeps the saga's own timeout apart from it.
    order = start_service(
        "order",
        MESH_UPSTREAM_PAYMENT=payment.address,
        MESH_POLICY__defaults__retry__per_attempt_timeout="4",
        **upstreams,
    )
    who = login(started["user"].address, "ada@example.com")
    request = order_pb2.CreateOrderRequest(
        items=[order_pb2.OrderItem(sku="TEA-SENCHA", quantity=1)],
        shipping_address=ship.Address(
            recipient="Ada", line1="1-1 Chiyoda", city="Tokyo", postal_code="100-0001", country_code="JP"
        ),
        request_id="deadline-1",
    )
    timeout = 1.5
    async with grpc.aio.insecure_channel(order.address) as plain:
        began = time.monotonic()
        try:
            reply = await OrderServiceStub(plain).CreateOrder(request, metadata=who, timeout=timeout)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert abs(time.monotonic() - began - timeout) <= 0.1
        else:  # the saga runner answers PENDING just before the deadline and carries on alone
            assert reply.order.status == order_pb2.ORDER_STATUS_PENDING, reply.order
            assert time.monotonic() - began <= timeout
    for _ in range(100):  # bounded poll: payment records each call as it arrives
        if payment.deadlines():
            break
        await asyncio.sleep(0.05)
    seen = payment.deadlines()[0]
    # The saga runs detached from the CreateOrder caller (it must finish whether or not the
    # caller still waits), so payment sees the saga's own per-call timeout, not the 1.5 s left
    # to the caller. Deadline inheritance itself is pinned by the two-hop test below.
    assert seen is not None and seen > timeout + 1.0


async def test_a_middle_hop_passes_on_the_deadline_it_inherits(faults: Any) -> None:
    (slow,) = faults(PAYMENT, False, sleep_ms=5000)
    (middle,) = faults(PAYMENT, False, relay=slow.address)  # forwards with no timeout of its own
    timeout = 0.8
    async with grpc.aio.insecure_channel(middle.address) as plain:
        wall, began = time.time(), time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await PaymentServiceStub(plain).GetPayment(pay.GetPaymentRequest(payment_id="p"), timeout=timeout)
        elapsed = time.monotonic() - began
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert abs(elapsed - timeout) <= 0.1
    for _ in range(100):  # bounded poll for the slow hop's cancellation record
        if slow.cancellations():
            break
        await asyncio.sleep(0.05)
    (seen,) = slow.deadlines()
    assert seen is not None and 0.5 < seen <= timeout  # the deadline travelled two hops
    assert abs(slow.cancellations()[0] - wall - timeout) <= 0.2
