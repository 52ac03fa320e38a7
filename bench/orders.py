"""Orders end to end: REST gateway -> order saga -> inventory, payment, shipping; and the outbox relay's lag.

A whole shop of real processes per backend (user, inventory, payment, shipping, order and
``python -m gateway``), on fresh SQLite files and on fresh PostgreSQL databases (created and
dropped here), with the bus on: the order service's relay publishes to the machine's RabbitMQ
under a namespace of its own (``bench-<hex>``), whose exchange and queues are deleted after.

Two phases per backend:

``throughput``  closed loop: CONCURRENCY clients POST /v1/orders (bearer token, unique
                ``requestId``) for at most N orders or T seconds. CreateOrder waits for the saga's
                terminal state up to its deadline, so its latency is the saga's; an order still
                PENDING is polled (GET /v1/orders/{id}) until terminal, which gives
                time-to-CONFIRMED. ``orders_per_s`` = CONFIRMED orders / the phase's wall time.
``relay_lag``   open loop at ~50 orders/s (~100 events/s: created + confirmed) for a bounded
                time; our own exclusive queue, bound to the run's exchange with ``order.#``,
                receives the events, and lag = receive time - ``OrderEvent.occur_time`` (the
                outbox row's commit time). Only events of orders placed in this phase count.

Stock is never the limit: an admin (seeded with ``services.user.seed_admin``) restocks the
demo SKU through the gateway first; cancellations are counted and reported anyway.

    .venv/bin/python bench/orders.py --quick   # under 60 s
    .venv/bin/python bench/orders.py           # a few minutes

The last line printed is one JSON object with ``orders_per_s`` (the SQLite figure),
``orders_per_s_sqlite``, ``orders_per_s_postgresql``, ``relay_lag_p99_ms`` and
``cpu_ms_per_order`` (per backend too, with ``cpu_ms_per_order_by_process_<backend>``): the
CPU every shop process, RabbitMQ and PostgreSQL spent in the throughput phase (from /proc) per
confirmed order. The relay and the event consumers run inside their services and are counted
with them. ``system_ms_per_order_by_process_<backend>`` (the kernel's part of those figures) and
``context_switches_per_order_by_process_<backend>`` (every thread of each shop process) show
what the hops between threads cost.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aio_pika  # noqa: E402
import aiohttp  # noqa: E402
import psycopg  # noqa: E402

from mesh.health import wait_serving  # noqa: E402
from mesh.identity import generate_keypair  # noqa: E402
from services.common.database import Database  # noqa: E402
from services.common.messaging import outbox  # noqa: E402
from services.common.settings import DEFAULT_AMQP_URL, MessagingSettings  # noqa: E402
from services.common.values import utc_now  # noqa: E402
from services.launcher import wait_ready  # noqa: E402
from services.order.domain import Address, Item, Order  # noqa: E402
from services.order.events import CREATED, order_event  # noqa: E402
from shop.order.v1 import events_pb2  # noqa: E402

PG_ADMIN_DSN = os.environ.get("BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
SERVICES = ("user", "inventory", "payment", "shipping", "order")
PARTICIPANTS = ("user", "inventory", "payment", "shipping")
SKU = "TEA-SENCHA"
RESTOCK = 1_000_000
ADMIN = ("bench-admin@example.com", "bench-admin-password-9")
CUSTOMERS = 4  # scrypt makes sign-ups slow; 4 tokens are plenty for the load
ADDRESS = {
    "recipient": "Ada",
    "line1": "1-1 Chiyoda",
    "city": "Tokyo",
    "postalCode": "100-0001",
    "countryCode": "JP",
}
TERMINAL = ("ORDER_STATUS_CONFIRMED", "ORDER_STATUS_CANCELLED")
KEYS = ("jwt",)  # the user key; services and the gateway are mesh identities, not keys


def cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` from /proc (zeros once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` from /proc (0 once it is gone)."""
    return sum(cpu_split(pid))


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every live thread of ``pid``.

    Each hop between a service's threads (grpc's poller, the event loop, the database
    writer) is a switch out and a wake-up; system CPU and these counts show what the hops
    cost, which instruction counts of Python code never see.
    """
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            status = (task / "status").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        for line in status.splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


def shared_server_cpu() -> dict[str, float]:
    """CPU seconds of the machine's RabbitMQ (beam.smp) and PostgreSQL (every ``postgres``
    process: a backend per connection), read from /proc, per PID (see cpu_per_order for the
    ones that come or go). Whole processes: other work on this machine would count too (none
    runs during a bench); under SQLite PostgreSQL's share is its idle housekeeping.
    """
    found: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        server = {"beam.smp": "rabbitmq", "postgres": "postgresql"}.get(name)
        if server is not None:
            found[f"{server}:{entry.name}"] = cpu_seconds(int(entry.name))
    return found


def cpu_per_order(before: dict[str, float], after: dict[str, float], confirmed: int) -> dict[str, float]:
    """Milliseconds of CPU per confirmed order between two snapshots, by process (servers
    summed over their PIDs).

    A server process that started between the snapshots counts from zero: all its CPU was
    spent in the phase. PostgreSQL forks a backend for each connection, and the services open
    theirs as their worker threads first need one, many of them during the phase: leaving
    those out (as this did until 2026-12-07) hid 2-4 ms of PostgreSQL's CPU per order. A PID
    whose CPU went down is a new process that reused it. One that ended in between is lost;
    its CPU can no longer be read.
    """
    spent: dict[str, float] = {}
    for key, seconds in after.items():
        name = key.split(":", 1)[0]
        start = before.get(key, 0.0)
        spent[name] = spent.get(name, 0.0) + seconds - (start if start <= seconds else 0.0)
    return {name: round(seconds * 1000 / max(confirmed, 1), 2) for name, seconds in spent.items()}


def kernel_per_order(
    before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]], confirmed: int
) -> dict[str, dict[str, float]]:
    """Per confirmed order and shop process: system CPU (ms, part of its CPU figure) and
    context switches, between two :meth:`Shop.kernel_snapshot` readings."""
    orders = max(confirmed, 1)
    system, switches = {}, {}
    for name, (seconds, count) in after.items():
        if name in before:
            system[name] = round((seconds - before[name][0]) * 1000 / orders, 2)
            switches[name] = round((count - before[name][1]) / orders, 1)
    return {"system_ms_per_order_by_process": system, "context_switches_per_order_by_process": switches}


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (None for no samples)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


# -- processes and databases -----------------------------------------------------------------


@dataclass
class Shop:
    """One shop of real processes behind one gateway; every process is stopped by its PID."""

    workdir: Path
    urls: dict[str, str]
    namespace: str
    amqp_url: str
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    by_name: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    gateway_port: int = 0
    profile: str = ""  # a service run under cProfile (--profile)

    def _start(self, args: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.started.append(process)
        self.by_name[name] = process
        return process

    def kernel_snapshot(self) -> dict[str, tuple[float, int]]:
        """System CPU seconds and context switches so far of each shop process."""
        return {
            name: (cpu_split(process.pid)[1], context_switches(process.pid))
            for name, process in self.by_name.items()
        }

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds so far of each shop process, of RabbitMQ and of PostgreSQL (see cpu_of)."""
        snapshot = {name: cpu_seconds(process.pid) for name, process in self.by_name.items()}
        snapshot.update(shared_server_cpu())
        return snapshot

    def _base_env(self) -> dict[str, str]:
        keys = self.workdir / "keys"
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MESH_", "GATEWAY_", "OTEL_", "SHOP_")) and not k.endswith("_DATABASE_URL")
        }
        env.update(
            PYTHONPATH=str(ROOT),
            MESH_LOG_LEVEL="WARNING",
            MESH_GRACE_SECONDS="3",  # nothing is in flight when the bench stops a shop
            MESH_DATA_DIR=str(self.workdir / "data"),
            MESH_JWT_PUBLIC_KEY_FILE=str(keys / "jwt-public.pem"),
            # Static upstreams, no Consul agent: plaintext inside the mesh, callers named by their
            # x-mesh-peer claim (what mTLS costs is bench/mtls.py's question, not this one's).
            MESH_INSECURE="1",
            SHOP_AMQP_URL=self.amqp_url,
            SHOP_EVENTS_NAMESPACE=self.namespace,
        )
        env.update({f"{n.upper()}_DATABASE_URL": url for n, url in self.urls.items()})
        return env

    def start(self) -> None:
        keys = self.workdir / "keys"
        for stem in KEYS:
            generate_keypair(keys, stem)
        base = self._base_env()
        seeded = subprocess.run(
            [sys.executable, "-m", "services.user.seed_admin"],
            cwd=ROOT,
            env=dict(base, MESH_ADMIN_EMAIL=ADMIN[0], MESH_ADMIN_PASSWORD=ADMIN[1]),
            capture_output=True,
            text=True,
            check=False,
        )
        if seeded.returncode != 0:
            raise RuntimeError(f"seed_admin failed: {seeded.stderr[-2000:]}")
        ports = {name: free_port() for name in SERVICES}
        extra: dict[str, dict[str, str]] = {
            "user": {"MESH_JWT_PRIVATE_KEY_FILE": str(keys / "jwt-private.pem")},
            "inventory": {"INVENTORY_SEED_DEMO": "1"},
            "order": {f"MESH_UPSTREAM_{n.upper()}": f"127.0.0.1:{ports[n]}" for n in PARTICIPANTS},
        }
        processes = {}
        for name in SERVICES:  # the participants first: the order service resumes sagas at start
            env = dict(base, MESH_PORT=str(ports[name]), **extra.get(name, {}))
            command = ["-m", f"services.{name}"]
            if name == self.profile:
                command = [
                    "-c",
                    PROFILED.format(out=self.workdir / f"{name}.prof", module=f"services.{name}"),
                ]
            processes[name] = self._start([sys.executable, *command], env, name)
            if name == "shipping":
                for participant in PARTICIPANTS:
                    self._ready(participant, ports[participant], processes[participant])
        self._ready("order", ports["order"], processes["order"])
        self.gateway_port = free_port()
        gateway_env = dict(
            base,
            GATEWAY_PORT=str(self.gateway_port),
            GATEWAY_RATE_LIMIT_PER_SECOND="0",
            GATEWAY_DEFAULT_TIMEOUT_SECONDS="30",
            GATEWAY_MAX_TIMEOUT_SECONDS="60",
            **{f"GATEWAY_UPSTREAM_{n.upper()}": f"127.0.0.1:{p}" for n, p in ports.items()},
        )
        gateway = self._start([sys.executable, "-m", "gateway"], gateway_env, "gateway")
        wait_ready(f"http://127.0.0.1:{self.gateway_port}/readyz", gateway, 60.0)

    def _ready(self, name: str, port: int, process: subprocess.Popen[bytes]) -> None:
        try:
            wait_serving(f"127.0.0.1:{port}", 60, process)
        except Exception as error:
            raise RuntimeError(f"{name} did not start: {error}\n{self.log_tail(name)}") from error

    def stop(self) -> None:
        """SIGTERM every process (drains overlap), then wait; SIGKILL what outlives the grace."""
        for process in reversed(self.started):
            if process.poll() is None:
                process.terminate()
        for process in self.started:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log_tail(self, name: str, size: int = 2000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""


@contextmanager
def databases(backend: str, workdir: Path) -> Iterator[dict[str, str]]:
    """Fresh databases for one run: SQLite files in ``workdir``, or PostgreSQL ones dropped after."""
    if backend == "sqlite":
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        yield {n: str(workdir / "data" / f"{n}.sqlite3") for n in SERVICES}
        return
    suffix = uuid.uuid4().hex[:10]
    names = {n: f"bench_{n}_{suffix}" for n in SERVICES}
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        for database in names.values():
            admin.execute(f'CREATE DATABASE "{database}"')
    try:
        yield {n: f"{base}/{database}" for n, database in names.items()}
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            for database in names.values():
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


async def delete_broker_objects(amqp_url: str, namespace: str) -> None:
    """Remove the run's exchange and every queue named after its namespace that we know of."""
    settings = MessagingSettings(amqp_url=amqp_url, namespace=namespace)
    connection = await aio_pika.connect(amqp_url, timeout=5)
    try:
        for consumer in ("billing", "notifications"):
            for queue in (settings.queue(consumer), f"{settings.queue(consumer)}.dlq"):
                channel = await connection.channel()
                with suppress(aio_pika.exceptions.AMQPError):  # absent: the error closes this channel only
                    await channel.queue_delete(queue)
        channel = await connection.channel()
        with suppress(aio_pika.exceptions.AMQPError):
            await channel.exchange_delete(settings.exchange)
    finally:
        await connection.close()


# -- the REST client ---------------------------------------------------------------------------


class Client:
    """REST calls through the gateway, as a customer or the admin."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base

    async def call(
        self, method: str, path: str, body: Any = None, token: str = ""
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, self.base + path, json=body, headers=headers) as reply:
            return reply.status, await reply.json(content_type=None)

    async def token(self, email: str, password: str, create: bool) -> str:
        if create:
            status, answer = await self.call(
                "POST",
                "/v1/users",
                {
                    "email": email,
                    "password": password,
                    "displayName": "Bench",
                    "requestId": f"signup-{uuid.uuid4().hex}",
                },
            )
            if status != 200:
                raise RuntimeError(f"CreateUser {status}: {answer}")
        status, answer = await self.call("POST", "/v1/users:login", {"email": email, "password": password})
        if status != 200:
            raise RuntimeError(f"Login {status}: {answer}")
        return str(answer["accessToken"])

    async def restock(self, admin: str, quantity: int) -> None:
        status, answer = await self.call(
            "POST",
            f"/v1/products/{SKU}:restock",
            {"quantity": str(quantity), "requestId": f"restock-{uuid.uuid4().hex}"},
            admin,
        )
        if status != 200:
            raise RuntimeError(f"RestockProduct {status}: {answer}")

    async def place(self, token: str) -> tuple[float, str, str]:
        """CreateOrder: (latency s, order id, status); raises on a non-200 answer."""
        body = {
            "items": [{"sku": SKU, "quantity": 1}],
            "shippingAddress": ADDRESS,
            "requestId": f"bench-{uuid.uuid4().hex}",
        }
        started = time.perf_counter()
        status, answer = await self.call("POST", "/v1/orders", body, token)
        latency = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"CreateOrder {status}: {answer}")
        return latency, str(answer["orderId"]), str(answer["status"])

    async def until_terminal(self, token: str, order_id: str, within: float = 60.0) -> str:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            status, answer = await self.call("GET", f"/v1/orders/{order_id}", token=token)
            if status == 200 and answer.get("status") in TERMINAL:
                return str(answer["status"])
            await asyncio.sleep(0.05)  # poll interval
        return "ORDER_STATUS_PENDING"


@dataclass
class Placed:
    latency: float
    to_terminal: float
    order_id: str
    status: str
    returned_pending: bool


async def place_and_follow(client: Client, token: str) -> Placed:
    started = time.perf_counter()
    latency, order_id, status = await client.place(token)
    pending = status not in TERMINAL
    if pending:
        status = await client.until_terminal(token, order_id)
    return Placed(latency, time.perf_counter() - started, order_id, status, pending)


# -- phases ------------------------------------------------------------------------------------


async def throughput(
    client: Client, tokens: list[str], concurrency: int, count: int, seconds: float
) -> dict[str, Any]:
    """Closed loop: at most ``count`` orders or ``seconds``, ``concurrency`` in flight."""
    results: list[Placed] = []
    errors: list[str] = []
    issued = 0
    started = time.perf_counter()
    stop_at = started + seconds

    async def worker(index: int) -> None:
        nonlocal issued
        while issued < count and time.perf_counter() < stop_at:
            issued += 1
            try:
                results.append(await place_and_follow(client, tokens[index % len(tokens)]))
            except Exception as error:  # counted and reported, the run goes on
                errors.append(str(error)[:200])

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    confirmed = [r for r in results if r.status == "ORDER_STATUS_CONFIRMED"]
    latencies = [r.latency for r in results]
    to_confirmed = [r.to_terminal for r in confirmed]
    return {
        "orders_per_s": round(len(confirmed) / elapsed, 1),
        "orders": len(results),
        "confirmed": len(confirmed),
        "cancelled": sum(r.status == "ORDER_STATUS_CANCELLED" for r in results),
        "pending_at_end": sum(r.status not in TERMINAL for r in results),
        "errors": len(errors),
        "first_errors": errors[:3],
        "seconds": round(elapsed, 1),
        "concurrency": concurrency,
        "create_p50_ms": ms(percentile(latencies, 50)),
        "create_p99_ms": ms(percentile(latencies, 99)),
        "confirmed_p50_ms": ms(percentile(to_confirmed, 50)),
        "confirmed_p99_ms": ms(percentile(to_confirmed, 99)),
        "returned_pending": sum(r.returned_pending for r in results),
    }


class Receiver:
    """Our own exclusive queue on the run's exchange (``order.#``), consumed on its own thread.

    The receive time is taken on a thread with its own event loop, so the load generator's busy
    loop (hundreds of HTTP calls in flight) does not delay it and inflate the lag.
    """

    def __init__(self, settings: MessagingSettings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.received: dict[str, list[tuple[str, float, float]]] = {}  # order id -> (event, lag, commit)
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="receiver", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self.ready.wait(30) or self.error is not None:
            raise RuntimeError(f"the event receiver did not start: {self.error}")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def events_of(self, order_id: str) -> list[tuple[str, float, float]]:
        with self.lock:
            return list(self.received.get(order_id, []))

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # reported to start() or left for the counts to show
            self.error = error
            self.ready.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        connection = await aio_pika.connect(self.settings.amqp_url, timeout=10)
        try:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                self.settings.exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange, "order.#")

            async def receive(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                now = time.time()
                event = events_pb2.OrderEvent.FromString(message.body)
                occurred = event.occur_time.seconds + event.occur_time.nanos / 1e9
                with self.lock:
                    self.received.setdefault(event.order.order_id, []).append(
                        (event.event_id, now - occurred, occurred)
                    )
                await message.ack()

            await queue.consume(receive)
            self.ready.set()
            await self._stop.wait()
        finally:
            await connection.close()


async def relay_lag(
    client: Client, tokens: list[str], amqp_url: str, namespace: str, rate: float, seconds: float
) -> dict[str, Any]:
    """Open loop at ``rate`` orders/s for ``seconds``; lag of each event of those orders."""
    receiver = Receiver(MessagingSettings(amqp_url=amqp_url, namespace=namespace))
    receiver.start()
    results: list[Placed] = []
    errors: list[str] = []
    try:

        async def one(index: int) -> None:
            try:
                results.append(await place_and_follow(client, tokens[index % len(tokens)]))
            except Exception as error:  # counted and reported
                errors.append(str(error)[:200])

        tasks = []
        started = time.perf_counter()
        total = int(rate * seconds)
        for index in range(total):  # open loop: each order at its own time, never catching up in bursts
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(index)))
        issuing = time.perf_counter() - started
        await asyncio.gather(*tasks)
        offered = (total - 1) / issuing if total > 1 and issuing > 0 else float(total)
        placed = {r.order_id for r in results}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # poll until the relay delivered this phase's events
            if sum(len(receiver.events_of(o)) for o in placed) >= 2 * len(placed):  # created + final
                break
            await asyncio.sleep(0.1)
    finally:
        receiver.stop()
    lags: dict[str, float] = {}
    commits: list[float] = []
    deliveries = 0
    for order_id in placed:
        for event_id, lag, occurred in receiver.events_of(order_id):
            deliveries += 1
            lags[event_id] = lag
            commits.append(occurred)
    values = list(lags.values())
    span = max(commits) - min(commits) if commits else 0.0
    return {
        "relay_lag_p50_ms": ms(percentile(values, 50)),
        "relay_lag_p99_ms": ms(percentile(values, 99)),
        "relay_lag_max_ms": ms(max(values) if values else None),
        "events": len(values),
        "events_expected": 2 * len(placed),
        "orders": len(placed),
        "errors": len(errors),
        "offered_orders_per_s": round(offered, 1),
        # The rate events were really committed at (a saturated shop commits slower than offered).
        "events_per_s_committed": round(len(values) / span, 1) if span > 0 else None,
        "duplicate_deliveries": deliveries - len(values),
    }


async def relay_alone(url: str, amqp_url: str, namespace: str, rate: float, seconds: float) -> dict[str, Any]:
    """The relay by itself: events written straight into the outbox at ``rate``/s, no saga load.

    Each row is what the order service writes (``order_event`` of a synthetic order, committed
    by ``outbox.add`` in its own transaction) but nothing wakes the relay, so this lag also
    holds its idle poll (``poll_seconds``). It separates what the relay costs from what a
    saturated shop adds in the end-to-end phase.
    """
    receiver = Receiver(MessagingSettings(amqp_url=amqp_url, namespace=namespace))
    receiver.start()
    database = Database("order", url, workers=1)
    written: list[str] = []
    try:
        started = time.perf_counter()
        for index in range(int(rate * seconds)):
            delay = started + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = utc_now()
            order = Order(
                f"ord_relay_{uuid.uuid4().hex}",
                "usr_bench_relay",
                f"relay-{index}",
                (Item(SKU, 1, 1250),),
                "EUR",
                1250,
                Address("Ada", "1-1 Chiyoda", "Tokyo", "100-0001", "JP"),
                now,
                now,
            )
            await database.transact(functools.partial(outbox.add, message=order_event(CREATED, order)))
            written.append(order.order_id)
        issuing = time.perf_counter() - started
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # poll until every written event arrived
            if all(receiver.events_of(o) for o in written):
                break
            await asyncio.sleep(0.1)
    finally:
        receiver.stop()
        await database.close()
    lags = [lag for o in written for _, lag, _ in receiver.events_of(o)[:1]]
    return {
        "relay_alone_lag_p50_ms": ms(percentile(lags, 50)),
        "relay_alone_lag_p99_ms": ms(percentile(lags, 99)),
        "events": len(lags),
        "events_expected": len(written),
        "events_per_s_written": round((len(written) - 1) / issuing, 1) if issuing > 0 else None,
    }


async def unsent_events(url: str) -> int:
    """Events still waiting in the order service's outbox."""
    database = Database("order", url, workers=1)
    try:
        row = await database.transact(
            lambda tx: tx.one("SELECT COUNT(*) AS n FROM outbox WHERE sent_time IS NULL")
        )
    finally:
        await database.close()
    return int(row["n"]) if row is not None else 0


async def drained(url: str, within: float = 60.0) -> None:
    """Poll until the outbox is empty, so the lag phase starts without a backlog."""
    deadline = time.monotonic() + within
    while await unsent_events(url) > 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the outbox still holds events after {within} s")
        await asyncio.sleep(0.1)  # poll interval


async def measure(backend: str, shop: Shop, options: argparse.Namespace) -> dict[str, Any]:
    """Both phases against one running shop."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=90)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        client = Client(session, f"http://127.0.0.1:{shop.gateway_port}")
        admin = await client.token(*ADMIN, create=False)
        await client.restock(admin, RESTOCK)
        tokens = list(
            await asyncio.gather(
                *(
                    client.token(f"bench-{i}-{shop.namespace}@example.com", "correct horse 9", create=True)
                    for i in range(CUSTOMERS)
                )
            )
        )
        for token in tokens[:2]:  # warm every path once (connections, first-use caches)
            await place_and_follow(client, token)
        before, kernel_before = shop.cpu_snapshot(), shop.kernel_snapshot()
        result = await throughput(client, tokens, options.concurrency, options.count, options.seconds)
        by_process = cpu_per_order(before, shop.cpu_snapshot(), result["confirmed"])
        result.update(kernel_per_order(kernel_before, shop.kernel_snapshot(), result["confirmed"]))
        # The shop's own processes (relay and consumers inside their services) and the broker
        # and database they use; not the load generator (this process).
        result["cpu_ms_per_order"] = round(sum(by_process.values()), 2)
        result["cpu_ms_per_order_by_process"] = by_process
        print(f"{backend}: throughput {json.dumps(result)}", file=sys.stderr)
        await drained(shop.urls["order"])
        lag = await relay_lag(
            client, tokens, shop.amqp_url, shop.namespace, options.rate, options.lag_seconds
        )
        print(f"{backend}: relay lag {json.dumps(lag)}", file=sys.stderr)
        await drained(shop.urls["order"])
        alone = await relay_alone(
            shop.urls["order"], shop.amqp_url, shop.namespace, 2 * options.rate, options.lag_seconds
        )
        print(f"{backend}: relay alone {json.dumps(alone)}", file=sys.stderr)
    return {"throughput": result, "relay": lag, "relay_alone": alone}


# cProfile timed by the event-loop thread's own CPU time (not the wall clock, which would
# charge waiting for the GIL or the network to whatever ran then).
PROFILED = """
import cProfile, runpy, sys, time
profile = cProfile.Profile(time.thread_time)
profile.enable()
try:
    runpy.run_module("{module}", run_name="__main__", alter_sys=True)
finally:
    profile.disable()
    profile.dump_stats("{out}")
"""


def print_profile(backend: str, path: Path) -> None:
    """The profiled service's top functions (its event-loop thread: cProfile sees no other)."""
    import pstats

    if not path.exists():
        print(f"{backend}: no profile at {path} (the service did not exit cleanly)", file=sys.stderr)
        return
    for order in ("tottime", "cumulative"):
        print(f"--- {backend}: {path.stem} by {order} ---", file=sys.stderr)
        pstats.Stats(str(path), stream=sys.stderr).sort_stats(order).print_stats(30)


async def run(backends: list[str], options: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Start every backend's shop at once (their start-ups overlap), then measure one at a time."""
    amqp_url = os.environ.get("SHOP_AMQP_URL", DEFAULT_AMQP_URL)
    async with AsyncExitStack() as stack:
        shops: dict[str, Shop] = {}
        for backend in backends:
            workdir = Path(tempfile.mkdtemp(prefix=f"bench-orders-{backend}-"))
            stack.callback(shutil.rmtree, workdir, True)
            urls = stack.enter_context(databases(backend, workdir))
            shop = Shop(workdir, urls, f"bench-{uuid.uuid4().hex[:10]}", amqp_url, profile=options.profile)
            stack.push_async_callback(delete_broker_objects, shop.amqp_url, shop.namespace)
            stack.callback(shop.stop)
            shops[backend] = shop
        started = time.monotonic()
        await asyncio.gather(*(asyncio.to_thread(shop.start) for shop in shops.values()))
        print(f"shops ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
        results = {}
        for backend, shop in shops.items():
            try:
                results[backend] = await measure(backend, shop, options)
            except Exception:
                for name in ("order", "gateway"):
                    print(f"--- {backend} {name} log tail ---\n{shop.log_tail(name)}", file=sys.stderr)
                raise
            shop.stop()  # the next backend runs without this one's processes
            if shop.profile:
                print_profile(backend, shop.workdir / f"{shop.profile}.prof")
        return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short phases, under 60 s in all")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument(
        "--count", type=int, default=None, help="at most this many orders in the throughput phase"
    )
    parser.add_argument("--seconds", type=float, default=None, help="at most this long, throughput phase")
    parser.add_argument(
        "--rate", type=float, default=50.0, help="orders/s in the relay lag phase (2 events each)"
    )
    parser.add_argument("--lag-seconds", type=float, default=None)
    parser.add_argument(
        "--profile",
        default="",
        choices=("", *SERVICES),
        help="run this service under cProfile and print its top functions (slows it down)",
    )
    options = parser.parse_args()
    options.concurrency = options.concurrency or 16
    options.count = options.count or (300 if options.quick else 5000)
    options.seconds = options.seconds or (4.0 if options.quick else 60.0)
    options.lag_seconds = options.lag_seconds or (3.0 if options.quick else 30.0)
    started = time.monotonic()
    per_backend = asyncio.run(run(options.backends.split(","), options))
    summary: dict[str, Any] = {}
    first = next(iter(per_backend))
    summary["orders_per_s"] = per_backend[first]["throughput"]["orders_per_s"]
    summary["cpu_ms_per_order"] = per_backend[first]["throughput"]["cpu_ms_per_order"]
    for backend, result in per_backend.items():
        summary[f"orders_per_s_{backend}"] = result["throughput"]["orders_per_s"]
        summary[f"create_p50_ms_{backend}"] = result["throughput"]["create_p50_ms"]
        summary[f"create_p99_ms_{backend}"] = result["throughput"]["create_p99_ms"]
        summary[f"cpu_ms_per_order_{backend}"] = result["throughput"]["cpu_ms_per_order"]
        summary[f"cpu_ms_per_order_by_process_{backend}"] = result["throughput"][
            "cpu_ms_per_order_by_process"
        ]
        for key in ("system_ms_per_order_by_process", "context_switches_per_order_by_process"):
            summary[f"{key}_{backend}"] = result["throughput"][key]
        summary[f"relay_lag_p99_ms_{backend}"] = result["relay"]["relay_lag_p99_ms"]
        summary[f"relay_alone_lag_p99_ms_{backend}"] = result["relay_alone"]["relay_alone_lag_p99_ms"]
    summary["relay_lag_p99_ms"] = per_backend[first]["relay"]["relay_lag_p99_ms"]
    summary["relay_alone_lag_p99_ms"] = per_backend[first]["relay_alone"]["relay_alone_lag_p99_ms"]
    summary["details"] = per_backend
    summary["quick"] = options.quick
    summary["cpus"] = os.cpu_count()
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
