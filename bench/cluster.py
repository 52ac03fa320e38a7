"""The shop across hosts: how soon the callers stop calling a lost instance, and what hosts cost.

``make cluster`` (deploy/cluster.toml: three Consul servers, app1..app3, the gateway on edge,
each host a network namespace; services/cluster/) runs as a real process, driven through
:class:`services.cluster.handle.ClusterProcess`. Clients call an idempotent read through the
gateway the whole time (``GET /v1/products?pageSize=3``, served by inventory, one instance on
app1 and one on app2), and one of two faults hits app2's inventory, trial after trial:

- **freeze**: SIGSTOP of that instance (a process that hangs, unlike a SIGKILL whose connection
  reset tells the caller at once); after the trial SIGCONT, and the next trial waits until
  Consul shows it passing and the gateway routes to it again;
- **partition**: app2's link to the switch taken down (``ClusterProcess.partition``), then
  healed, with the same wait.

``*_to_last_call_ms`` is the time from the fault to the start of the last attempt the gateway
sent to that instance, read from the gateway's own OpenTelemetry CLIENT spans (one per attempt,
with ``server.address``/``server.port`` and the attempt's start, docs/metrics.md), exported over
OTLP/gRPC (batches every 100 ms) to a receiver in this process (bench/otlp_sink.py) that every
host reaches through ``CLUSTER_FORWARD_PORTS``. The fault stays on until Consul (as the edge
host's agent, the gateway's own, answers) no longer has the instance passing and no attempt to
it has started for 3 s; the figures are computed once the load has stopped and every span has
arrived, from the attempts started before the repair. A negative figure: no attempt went there
after the fault. Percentiles are nearest-rank (p99 of 20 trials is the largest). Each trial
also reports when Consul dropped the instance (``*_to_critical_ms``, polled every 50 ms), the
outlier ejections of the gateway's mesh channel (its ``mesh_outlier_ejections_total``), and the
calls that failed at the clients (through the gateway a read has three 1 s attempts: 0 expected).

``ratio_cluster_vs_single`` puts the same closed-loop load (same clients, same route, bounded
in count and time) through the cluster's gateway and through the single-host shop's (``make
run``'s launcher, services/launcher.py, deploy/local.toml: also two inventory instances), both
running at once, rounds interleaved with the order alternating; the ratio is the median of
per-round ratios, and CPU per call is read from /proc for each shop's processes by role. Both
shops use the machine's PostgreSQL (``--single-sqlite``: the single host on its default SQLite)
and both export spans to the same receiver, so what differs is the layout. The launcher runs
with its run directory moved from .run/ to .run/bench-cluster-<id>/ (it has no setting for
that, and tests running the launcher meanwhile use .run/tokens). It is stopped before the trials.

Everything stays on loopback or inside the run's namespaces; both shops get their own ports,
JWT key pair, PostgreSQL databases (dropped at the end) and RabbitMQ namespace (deleted at the
end), and are stopped by PID (SIGINT: the cluster run removes its namespaces). Needs root.

    .venv/bin/python bench/cluster.py            # 20 + 20 trials, 6 rounds x 5 s: ~8-12 min
    .venv/bin/python bench/cluster.py --quick    # 5 + 5 trials, 3 rounds x 2 s: under 3 min

The last line printed is one JSON object (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench.otlp_sink import Attempt, OtlpSink  # noqa: E402
from mesh.identity import generate_keypair  # noqa: E402
from mesh.registry.dev_agent import free_port  # noqa: E402
from services.cluster.handle import ClusterProcess, DrivenProcess  # noqa: E402
from services.cluster.network import namespaces  # noqa: E402
from services.cluster.shop import DATABASE_SERVICES  # noqa: E402
from services.common.settings import DEFAULT_AMQP_URL, DEFAULT_PORTS, MessagingSettings  # noqa: E402

PATH = "/v1/products?pageSize=3"
REQUEST = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n".encode()
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
VICTIM_HOST = "app2"
SERVICE = "inventory"
CLIENTS = 16  # closed-loop clients of the throughput rounds, per layout
TRIAL_CLIENTS = 8  # paced clients during the trials
TRIAL_RATE = 100.0  # calls/s they offer together: fine-grained enough, far from saturating
MAX_CALLS = 100_000  # per client and phase: every load is bounded in count as well as in time
CALL_TIMEOUT = 30.0
QUIET = 3.0  # s without a new attempt to the victim (after Consul dropped it): the trial is over
FAULT_CAP = 60.0  # s a fault is left on at most
RECOVER_CAP = 90.0  # s to wait for the victim to be passing and called again
POLL = 0.05
OTEL_ENV = {
    "OTEL_TRACES_EXPORTER": "otlp",
    "OTEL_TRACES_SAMPLER": "parentbased_always_on",  # every gateway call is a root: all sampled
    "OTEL_BSP_SCHEDULE_DELAY": "100",  # ms (the SDK's default is 5000): spans arrive promptly
    "OTEL_BSP_MAX_QUEUE_SIZE": "65536",  # none dropped at the throughput rounds' rates
}


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version()}


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# -- processes and their CPU -------------------------------------------------------------------


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop()
        for child in children.get(pid, []):
            found.append(child)
            queue.append(child)
    return found


def role(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    name = os.path.basename(args[0].decode(errors="replace"))
    if name == "socat":
        return "socat"
    if name == "consul":
        return "consul"
    if b"-c" in args:
        return "runner"  # the launcher, started through LAUNCHER
    if b"-m" in args:
        module = args[args.index(b"-m") + 1].decode(errors="replace")
        if module == "gateway":
            return "gateway"
        if module == "services.inventory":
            return "inventory"
        if module in ("services.cluster", "services.launcher"):
            return "runner"
    return "other"


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuWatch:
    """CPU seconds of a process tree by role, between :meth:`start` and :meth:`stop`."""

    root: int
    before: dict[int, tuple[str, float]] = field(default_factory=dict)

    def start(self) -> None:
        pids = [self.root, *descendants(self.root)]
        self.before = {pid: (role(pid), cpu_seconds(pid)) for pid in pids}

    def stop(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for pid, (name, seconds) in self.before.items():
            used[name] = used.get(name, 0.0) + max(0.0, cpu_seconds(pid) - seconds)
        used.pop("gone", None)
        return used


# -- the two shops -------------------------------------------------------------------------------


def base_env(keys: tuple[Path, Path], otlp_port: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MESH_", "SHOP_", "GATEWAY_", "OTEL_", "CONSUL_", "CLUSTER_"))
        and not k.endswith("_DATABASE_URL")
    }
    env.update(OTEL_ENV)
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
        MESH_JWT_PRIVATE_KEY_FILE=str(keys[0]),
        MESH_JWT_PUBLIC_KEY_FILE=str(keys[1]),
        GATEWAY_RATE_LIMIT_PER_SECOND="0",
        PYTHONUNBUFFERED="1",
    )
    return env


# ``make run``'s own main(), with its run directory (tokens, logs, the agent's log) moved from the
# shared .run/ to one of ours under it: the launcher has no setting for it, and the tests that
# run the launcher at the same time read and write .run/tokens.
LAUNCHER = """
import sys
from pathlib import Path
import services.launcher as launcher
run = Path(sys.argv[1])
launcher.RUN_DIR, launcher.TOKEN_DIR, launcher.LOG_DIR = run, run / "tokens", run / "logs"
launcher.spawn.__kwdefaults__["log_dir"] = run / "logs"
sys.exit(launcher.main())
"""


def launcher(env: dict[str, str], run_dir: Path) -> DrivenProcess:
    """``make run``'s launcher (services/launcher.py) with an environment and a run directory of ours."""
    argv = [sys.executable, "-c", LAUNCHER, str(run_dir)]
    return DrivenProcess(argv, env, ready_line="Ctrl-C stops everything.", what="make run")


def create_databases(names: list[str]) -> None:
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')


def drop_databases(names: list[str]) -> None:
    with psycopg.connect(POSTGRES, autocommit=True) as admin:
        for name in names:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def delete_broker_objects(amqp_url: str, namespace: str) -> None:
    """The run's exchange and the consumers' queues (and dead-letter queues) in RabbitMQ."""
    import aio_pika

    settings = MessagingSettings(amqp_url=amqp_url, namespace=namespace)
    connection = await aio_pika.connect(amqp_url, timeout=5)
    try:
        for consumer in ("billing", "notifications"):
            for queue in (settings.queue(consumer), f"{settings.queue(consumer)}.dlq"):
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):  # absent: closes this channel only
                    await channel.queue_delete(queue)
        channel = await connection.channel()
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await channel.exchange_delete(settings.exchange)
    finally:
        await connection.close()


# -- load ------------------------------------------------------------------------------------------


class Client:
    """One keep-alive HTTP/1.1 connection to a gateway sending the read; reconnects after an error."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.failure = ""
        """What the last call that did not answer 200 got (the start of its body, or the error)."""

    async def call(self) -> int:
        """The HTTP status, or 0 when the connection failed or the answer took over 30 s."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                if self.writer is None or self.reader is None:
                    self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
                self.writer.write(REQUEST)
                head = await self.reader.readuntil(b"\r\n\r\n")
                lower = head.lower()
                start = lower.index(b"content-length:")
                length = int(lower[start + 15 : lower.index(b"\r\n", start)])
                body = await self.reader.readexactly(length)
                status = int(head[9:12])
                if status != 200:
                    self.failure = body[:300].decode(errors="replace")
                if b"connection: close" in lower:
                    self.close()
                return status
        except (
            OSError,
            TimeoutError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ) as error:
            self.failure = repr(error)
            self.close()
            return 0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def closed_loop(clients: list[Client], seconds: float) -> tuple[int, Counter[int]]:
    """Every client calling back to back for ``seconds`` (or MAX_CALLS each); calls and statuses."""
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds

    async def run(client: Client) -> None:
        for _ in range(MAX_CALLS):
            if time.monotonic() >= deadline:
                return
            statuses[await client.call()] += 1

    await asyncio.gather(*(run(client) for client in clients))
    return sum(statuses.values()), statuses


@dataclass
class PacedLoad:
    """Clients offering ``rate`` calls/s together until stopped (or MAX_CALLS each, or ``seconds``)."""

    clients: list[Client]
    rate: float
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[tuple[int, int, str]] = field(default_factory=list)
    """(wall-clock ns when the call started, status, what it got) of every call that did not answer 200."""
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> PacedLoad:
        self._tasks = [asyncio.ensure_future(self._run(c, n)) for n, c in enumerate(self.clients)]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        for client in self.clients:
            client.close()

    async def _run(self, client: Client, number: int) -> None:
        period = len(self.clients) / self.rate
        start = time.monotonic() + number * period / len(self.clients)
        deadline = time.monotonic() + self.seconds
        for sent in range(MAX_CALLS):
            delay = start + sent * period - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set() or time.monotonic() >= deadline:
                return
            began = time.time_ns()
            status = await client.call()
            self.statuses[status] += 1
            if status != 200:
                self.failures.append((began, status, client.failure))


# -- throughput, side by side --------------------------------------------------------------------


@dataclass
class Layout:
    name: str
    port: int
    root: int
    clients: list[Client] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)
    failed: int = 0


async def throughput(layouts: list[Layout], rounds: int, seconds: float) -> None:
    for layout in layouts:
        layout.clients = [Client(layout.port) for _ in range(CLIENTS)]
        _, statuses = await closed_loop(layout.clients, 1.0)  # connect and warm every path
        say(f"warm: {layout.name} {dict(statuses)}")
    for number in range(rounds):
        order = layouts if number % 2 == 0 else layouts[::-1]
        for layout in order:
            watch = CpuWatch(layout.root)
            await asyncio.to_thread(watch.start)
            bench_cpu = time.process_time()
            started = time.perf_counter()
            calls, statuses = await closed_loop(layout.clients, seconds)
            elapsed = time.perf_counter() - started
            used = await asyncio.to_thread(watch.stop)
            used["bench"] = time.process_time() - bench_cpu
            layout.rps.append(calls / elapsed)
            layout.cpu.append({k: v / max(calls, 1) * 1e6 for k, v in used.items()})
            layout.failed += sum(n for status, n in statuses.items() if status != 200)
        say(f"round {number + 1}/{rounds}: " + "  ".join(f"{x.name}={x.rps[-1]:.0f}/s" for x in layouts))
    for layout in layouts:
        for client in layout.clients:
            client.close()


# -- fault trials ----------------------------------------------------------------------------------


def consul_get(shop: ClusterProcess, path: str) -> Any:
    """A read through the edge host's agent (the gateway's own), as the "cli" identity."""
    request = urllib.request.Request(
        shop.host("edge")["consul_http"] + path, headers={"X-Consul-Token": shop.token("cli")}
    )
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.loads(reply.read())


def consul_passing(shop: ClusterProcess, target: str) -> bool:
    """Whether Consul, asked through the edge host's agent, has ``target`` passing."""
    rows = consul_get(shop, f"/v1/health/service/{SERVICE}?passing=1&stale")
    return any(f"{row['Service']['Address']}:{row['Service']['Port']}" == target for row in rows)


def ejections(shop: ClusterProcess) -> int:
    """The gateway's ``mesh_outlier_ejections_total`` for inventory (its /metrics, inside edge); -1: unknown."""
    rows = consul_get(shop, "/v1/health/service/gateway?stale")
    port = rows[0]["Service"]["Meta"].get("metrics_port", "") if rows else ""
    if not port:
        return -1
    inside_edge = ["ip", "netns", "exec", shop.host("edge")["namespace"]]
    done = subprocess.run(
        [*inside_edge, "curl", "-s", "--max-time", "5", f"http://127.0.0.1:{port}/metrics"],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith("mesh_outlier_ejections_total{") and f'target_service="{SERVICE}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return -1


def victim_pid(shop: ClusterProcess) -> int:
    for pid in shop.pids(VICTIM_HOST):
        with contextlib.suppress(OSError):
            if b"services.inventory" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    raise RuntimeError(f"no inventory instance on {VICTIM_HOST}")


@dataclass
class Trial:
    kind: str
    fault_ns: int
    critical_ns: int
    """When Consul (the edge agent) first answered without the victim; 0: not within FAULT_CAP."""
    repaired_ns: int
    recovered_s: float | None
    """From the repair until Consul has it passing and the gateway calls it again (None: not waited for)."""
    ejected: int
    """Outlier ejections of inventory endpoints by the gateway's mesh channel during the fault."""

    def result(self, attempts: list[Attempt], failures: list[tuple[int, int, str]]) -> dict[str, Any]:
        """The trial's figures from every attempt to the victim the gateway reported, once all arrived.

        The last call is the latest attempt started before the repair (SIGCONT, heal): an attempt
        after it is the victim back in service.
        """
        during = [a for a in attempts if a.start_ns < self.repaired_ns]
        after = [a for a in during if a.start_ns >= self.fault_ns]
        last = max((a.start_ns for a in during), default=self.fault_ns)
        return {
            "to_last_call_ms": (last - self.fault_ns) / 1e6,
            "to_critical_ms": (self.critical_ns - self.fault_ns) / 1e6 if self.critical_ns else None,
            "attempts_after": len(after),
            "attempts_after_failed": sum(1 for a in after if a.code != 0),
            "failed_calls": sum(1 for began, _, _ in failures if self.fault_ns <= began < self.repaired_ns),
            "recovered_s": self.recovered_s,
            "ejected": self.ejected,
        }


@dataclass
class Trials:
    shop: ClusterProcess
    sink: OtlpSink
    target: str
    done: list[Trial] = field(default_factory=list)

    def attempts(self) -> list[Attempt]:
        return [a for a in self.sink.attempts if a.target == self.target]

    def last_start(self) -> int:
        return max((a.start_ns for a in self.attempts()), default=0)

    async def passing(self) -> bool:
        try:
            return await asyncio.to_thread(consul_passing, self.shop, self.target)
        except (OSError, ValueError, urllib.error.URLError):
            return False  # an agent busy electing or syncing: ask again

    async def until_routed_again(self, since_ns: int) -> float:
        """Seconds until Consul has the victim passing and an attempt to it started after ``since_ns``."""
        started = time.monotonic()
        while time.monotonic() - started < RECOVER_CAP:
            if self.last_start() > since_ns and await self.passing():
                return time.monotonic() - started
            await asyncio.sleep(POLL)
        raise RuntimeError(f"{self.target} not passing and called again within {RECOVER_CAP:g} s")

    async def trial(
        self, kind: str, fault: Callable[[], None], repair: Callable[[], None], recover: bool
    ) -> Trial:
        """Fault; wait until Consul drops the victim and no attempt went to it for QUIET s; repair.

        With ``recover``, then wait until the victim is passing and called again (for the next trial).
        """
        ejected_before = await asyncio.to_thread(ejections, self.shop)
        fault_ns = time.time_ns()
        await asyncio.to_thread(fault)
        critical_ns = 0
        try:
            while (time.time_ns() - fault_ns) / 1e9 < FAULT_CAP:
                now = time.time_ns()
                if not critical_ns and not await self.passing():
                    critical_ns = time.time_ns()
                if critical_ns and (now - max(critical_ns, self.last_start())) / 1e9 >= QUIET:
                    break
                await asyncio.sleep(POLL)
        finally:
            await asyncio.to_thread(repair)
        repaired_ns = time.time_ns()
        ejected_after = await asyncio.to_thread(ejections, self.shop)  # before it is called again
        ejected = ejected_after - ejected_before if min(ejected_before, ejected_after) >= 0 else -1
        recovered = await self.until_routed_again(repaired_ns) if recover else None
        made = Trial(kind, fault_ns, critical_ns, repaired_ns, recovered, ejected)
        self.done.append(made)
        return made

    async def run(self, kind: str, count: int, load: PacedLoad, *, recover_last: bool = True) -> None:
        """``count`` trials of one fault; after the last one, wait for recovery only if ``recover_last``."""
        for number in range(count):
            recover = recover_last or number < count - 1
            if kind == "freeze":
                pid = await asyncio.to_thread(victim_pid, self.shop)
                made = await self.trial(
                    kind,
                    partial(os.kill, pid, signal.SIGSTOP),
                    partial(os.kill, pid, signal.SIGCONT),
                    recover,
                )
            else:
                made = await self.trial(
                    kind,
                    partial(self.shop.partition, VICTIM_HOST),
                    partial(self.shop.heal, VICTIM_HOST),
                    recover,
                )
            seen = made.result(self.attempts(), load.failures)  # so far: late spans may still come
            critical = seen["to_critical_ms"]
            say(
                f"{kind} {number + 1}/{count}: last call {seen['to_last_call_ms']:.0f} ms, "
                f"Consul critical {'never' if critical is None else f'{critical:.0f} ms'}, "
                f"{seen['attempts_after']} attempts after ({seen['attempts_after_failed']} failed), "
                f"{seen['failed_calls']} failed calls, {made.ejected} ejection(s) by the gateway"
                + ("" if made.recovered_s is None else f", routed again after {made.recovered_s:.1f} s")
            )

    def where(self, failures: list[tuple[int, int, str]]) -> list[dict[str, Any]]:
        """Each failed call (the first 20) placed in the trial it fell in: during the fault or after the repair."""
        placed = []
        for began, status, got in failures[:20]:
            before = [t for t in self.done if t.fault_ns <= began]
            trial = before[-1] if before else None
            placed.append(
                {
                    "status": status,
                    "got": got,
                    "trial": f"{trial.kind} {sum(1 for t in before if t.kind == trial.kind)}"
                    if trial
                    else "before",
                    "ms_after_fault": round((began - trial.fault_ns) / 1e6, 1) if trial else None,
                    "ms_after_repair": round((began - trial.repaired_ns) / 1e6, 1) if trial else None,
                }
            )
        return placed

    def results(self, failures: list[tuple[int, int, str]]) -> dict[str, list[dict[str, Any]]]:
        attempts = self.attempts()
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for made in self.done:
            by_kind.setdefault(made.kind, []).append(made.result(attempts, failures))
        return by_kind


def summary(results: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    last = [r["to_last_call_ms"] for r in results]
    critical = [r["to_critical_ms"] for r in results if r["to_critical_ms"] is not None]
    return {
        f"{prefix}_to_last_call_ms_p50": round(statistics.median(last), 1),
        f"{prefix}_to_last_call_ms_p99": round(nearest_rank(last, 0.99), 1),
        f"{prefix}_to_critical_ms_p50": round(statistics.median(critical), 1) if critical else None,
        f"{prefix}_to_critical_ms_p99": round(nearest_rank(critical, 0.99), 1) if critical else None,
    }


# -- the run -----------------------------------------------------------------------------------------


async def bench(options: argparse.Namespace) -> dict[str, Any]:
    hexid = uuid.uuid4().hex[:10]
    workdir = Path(tempfile.mkdtemp(prefix="bcl-"))
    sink = await OtlpSink().start()
    keys = generate_keypair(workdir / "keys")
    amqp_url = os.environ.get("SHOP_AMQP_URL", DEFAULT_AMQP_URL)
    cluster_prefix, single_prefix = f"b_cluster_{hexid}", f"b_single_{hexid}"
    databases = [f"{cluster_prefix}_{s}" for s in DATABASE_SERVICES]

    cluster_env = base_env(keys, sink.port)
    cluster_env.update(
        MESH_CLUSTER_DIR=str(workdir / "cluster"),
        MESH_CLUSTER_STATE=str(workdir / "cluster-state.json"),
        MESH_CONTROL_FILE=str(workdir / "cluster-control.json"),
        CLUSTER_POSTGRES_DSN=POSTGRES,
        CLUSTER_DATABASE_PREFIX=cluster_prefix,
        CLUSTER_FORWARD_PORTS=str(sink.port),
        SHOP_EVENTS_NAMESPACE=cluster_prefix,
    )
    single_env = base_env(keys, sink.port)
    single_env.update({f"{name.upper()}_PORT": str(free_port()) for name in DEFAULT_PORTS})
    single_env.update(
        GATEWAY_PORT=str(free_port()),
        MESH_XDS_PORT=str(free_port()),
        MESH_DASHBOARD_PORT=str(free_port()),
        MESH_XDS_BOOTSTRAP=str(workdir / "single-xds-bootstrap.json"),
        CONSUL_HTTP_ADDR=f"127.0.0.1:{free_port()}",  # nothing there: the launcher starts its agent
        MESH_DATA_DIR=str(workdir / "single-data"),
        MESH_CONTROL_FILE=str(workdir / "single-control.json"),
        SHOP_EVENTS_NAMESPACE=single_prefix,
    )
    if not options.single_sqlite:
        single_dbs = [f"{single_prefix}_{s}" for s in DATABASE_SERVICES]
        databases += single_dbs
        create_databases(single_dbs)
        base = POSTGRES.rsplit("/", 1)[0]
        single_env.update(
            {f"{s.upper()}_DATABASE_URL": f"{base}/{single_prefix}_{s}" for s in DATABASE_SERVICES}
        )

    shop = ClusterProcess(env=cluster_env)
    single_run = ROOT / ".run" / f"bench-cluster-{hexid}"
    single = launcher(single_env, single_run)
    load: PacedLoad | None = None
    result: dict[str, Any] = {}
    try:
        say(f"starting make run, then make cluster (temp dir {workdir}, OTLP receiver 127.0.0.1:{sink.port})")
        up = time.monotonic()
        # One after the other: each picks free ports that it binds only later, and two starts at
        # once can pick the same one (both pick a moment before either binds).
        await asyncio.to_thread(single.start)
        cluster_env.update(GATEWAY_PORT=str(free_port()), CONSUL_HTTP_ADDR=f"127.0.0.1:{free_port()}")
        await asyncio.to_thread(shop.start)
        startup = time.monotonic() - up
        say(f"both shops up after {startup:.1f} s (cluster owner pid {shop.state['owner']})")
        assert shop.process is not None and single.process is not None

        layouts = [
            Layout("cluster", shop.gateway_port, shop.process.pid),
            Layout("single", int(single_env["GATEWAY_PORT"]), single.process.pid),
        ]
        phase = time.monotonic()
        await throughput(layouts, options.rounds, options.seconds)
        throughput_s = time.monotonic() - phase
        code = await asyncio.to_thread(single.stop)
        say(f"single-host shop stopped (exit {code})")

        target = f"{shop.host(VICTIM_HOST)['address']}:{DEFAULT_PORTS[SERVICE]}"
        trials = Trials(shop, sink, target)
        sink.recording = True
        trial_seconds = 2 * options.trials * (FAULT_CAP + RECOVER_CAP) + 120
        load = PacedLoad([Client(shop.gateway_port) for _ in range(TRIAL_CLIENTS)], TRIAL_RATE, trial_seconds)
        load.start()
        phase = time.monotonic()
        ready = await trials.until_routed_again(time.time_ns())
        say(
            f"trials: {target} is called (after {ready:.1f} s); {TRIAL_CLIENTS} clients at {TRIAL_RATE:g} calls/s"
        )
        await trials.run("freeze", options.trials, load)
        freeze_s = time.monotonic() - phase
        phase = time.monotonic()
        await trials.run("partition", options.trials, load, recover_last=False)  # nothing follows
        partition_s = time.monotonic() - phase
        await load.stop()
        await asyncio.sleep(1.0)  # the gateway's last spans: exported every 100 ms
        sink.recording = False
        results = trials.results(load.failures)

        single_layout, cluster_layout = layouts[1], layouts[0]
        ratios = [c / s for c, s in zip(cluster_layout.rps, single_layout.rps, strict=True)]
        every = [r for rows in results.values() for r in rows]
        result = {
            **summary(results["freeze"], "freeze"),
            **summary(results["partition"], "partition"),
            "ratio_cluster_vs_single": round(statistics.median(ratios), 3),
            "freeze_trials": len(results["freeze"]),
            "partition_trials": len(results["partition"]),
            "calls_per_second": {x.name: round(statistics.median(x.rps)) for x in layouts},
            "failed_calls": len(load.failures),
            "failed_calls_in_trials": sum(r["failed_calls"] for r in every),
            "failed_statuses": {str(k): n for k, n in load.statuses.items() if k != 200},
            "failures": trials.where(load.failures),
            "trial_calls": sum(load.statuses.values()),
            "failed_calls_throughput": sum(x.failed for x in layouts),
            "ratios_per_round": [round(r, 3) for r in ratios],
            "cpu_us_per_call": {
                x.name: {
                    key: round(statistics.median(r.get(key, 0.0) for r in x.cpu), 1)
                    for key in sorted({k for r in x.cpu for k in r})
                }
                for x in layouts
            },
            "trials": {
                kind: {
                    key: [None if r[key] is None else round(r[key], 1) for r in rows]
                    for key in (
                        "ejected",
                        "to_last_call_ms",
                        "to_critical_ms",
                        "attempts_after",
                        "failed_calls",
                        "recovered_s",
                    )
                }
                for kind, rows in results.items()
            },
            "attempts_after_fault": sum(r["attempts_after"] for r in every),
            "attempts_after_fault_failed": sum(r["attempts_after_failed"] for r in every),
            "never_critical_trials": sum(1 for r in every if r["to_critical_ms"] is None),
            "victim": f"{SERVICE} on {VICTIM_HOST} ({target})",
            "call": f"GET {PATH}",
            "clients": CLIENTS,
            "trial_clients": TRIAL_CLIENTS,
            "trial_rate": TRIAL_RATE,
            "rounds": options.rounds,
            "seconds_per_run": options.seconds,
            "single_database": "sqlite" if options.single_sqlite else "postgresql",
            "phase_seconds": {
                "startup": round(startup, 1),
                "throughput": round(throughput_s, 1),
                "freeze": round(freeze_s, 1),
                "partition": round(partition_s, 1),
            },
        }
    finally:
        if load is not None:
            await load.stop()
        await asyncio.to_thread(single.stop)
        code = await asyncio.to_thread(shop.stop)
        owner = shop.state.get("owner")
        left = [n for n in namespaces() if owner and n.startswith(f"tsu-{owner}-")]
        say(f"make cluster exited with {code}; namespaces left: {left}")
        if options.keep_logs:
            kept = Path(tempfile.gettempdir()) / f"bench-cluster-logs-{hexid}"
            with contextlib.suppress(OSError):
                shutil.copytree(workdir / "cluster" / "logs", kept / "cluster")
            with contextlib.suppress(OSError):
                shutil.copytree(single_run / "logs", kept / "single")
            say(f"logs kept in {kept}")
        shutil.rmtree(single_run, ignore_errors=True)
        await sink.stop()
        await asyncio.to_thread(drop_databases, databases)
        for namespace in (cluster_prefix, single_prefix):
            with contextlib.suppress(Exception):  # best effort: the broker may be down
                await delete_broker_objects(amqp_url, namespace)
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 + 5 trials, 3 rounds x 2 s (under 3 min)")
    parser.add_argument("--trials", type=int, default=None, help="trials per fault (20; --quick 5)")
    parser.add_argument("--rounds", type=int, default=None, help="throughput rounds (6; --quick 3)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="seconds per layout and round (5; --quick 2)"
    )
    parser.add_argument(
        "--single-sqlite", action="store_true", help="the single-host shop on SQLite, as make run"
    )
    parser.add_argument("--keep-logs", action="store_true", help="copy the shops' logs to /tmp first")
    options = parser.parse_args()
    options.trials = options.trials or (5 if options.quick else 20)
    options.rounds = options.rounds or (3 if options.quick else 6)
    options.seconds = options.seconds or (2.0 if options.quick else 5.0)
    if os.geteuid() != 0:
        sys.exit("bench/cluster.py needs root (make cluster's hosts are network namespaces)")
    info = machine()
    load_before = loadavg()
    say(
        f"machine: nproc {info['cpus']}, {info['cpu_model']}, Python {info['python']}, "
        f"load average {load_before:.2f}"
    )
    started = time.monotonic()
    result = asyncio.run(bench(options))
    result.update(info)
    result["loadavg_start"] = load_before
    result["loadavg_end"] = loadavg()
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    result["quick"] = options.quick
    print(json.dumps(result))


if __name__ == "__main__":
    main()
