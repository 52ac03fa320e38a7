"""Server instructions per call, counted by callgrind: where inventory's CPU per GetProduct goes.

bench/gateway.py reports the inventory process's CPU per ``GetProduct`` (one SQLite row, via
the REST gateway); this benchmark splits that cost by peeling the server stack. Each variant
is a real inventory process (``services.common.app.run``: settings from the environment,
migrations, the demo catalog, telemetry) whose ``serve`` is swapped for one that keeps only
some layers. Cumulative, innermost first:

  bare         grpc.aio.server(), a GetProduct that returns one constant response
  servicer     grpc.aio.server() with the real InventoryServicer (store, SQLite via the pool)
  mesh         MeshServer (health, reflection, its options) with no interceptor
  status       + the StatusInterceptor (DomainError -> google.rpc.Status)
  deadline     + DeadlineInterceptor
  metrics      + MetricsServerInterceptor
  log_warning  + RpcLogServerInterceptor at MESH_LOG_LEVEL=WARNING: no line for OK calls.
               This is the process bench/gateway.py measures (MESH_INSECURE=1, no OTEL_*).
  log_info     the same at INFO: one JSON line per call (to stderr, a file)
  tracing      + TracingServerInterceptor, every call sampled, the SDK's batch processor
               and the real OTLP/gRPC exporter to a sink in this process that drops spans
  tls          + mTLS from a Consul dev agent's Connect CA, IntentionGuard removed
  intentions   + IntentionGuard: the full stack of a service under mTLS
  bare_sync    not a step: grpc.server() (the sync, thread-pool server) with the same constant
               answer, compared with bare (its layer cost is bare_sync - bare)
  bare_uvloop, tracing_uvloop
               not steps: bare and tracing with the server on uvloop's event loop instead of
               asyncio's (layer cost against bare and tracing)

For each variant the server runs under ``valgrind --tool=callgrind`` twice; a client in this
process (not under valgrind; a MeshChannel, timeout 10 s, as the gateway calls) makes
``warmup`` calls, then ``low`` or ``high`` calls at concurrency ``--concurrency``; then the
server gets SIGTERM. (count(high) - count(low)) / (high - low) is one call's cost, free of
start-up and shutdown. The callgrind output of both runs is also split by ELF object
(libpython, grpc's cygrpc, SQLite, libc...) and by C function, so the table says how much of a
call is the Python interpreter and how much grpc-core or SQLite.

Instruction counts do not depend on what else the machine runs (other benchmarks share these
two cores); times do. ``--native`` adds, per variant, the server's CPU per call run natively
(from /proc, median of three windows), for an instructions -> microseconds rate; those CPU
times move with the machine's load by tens of percent. (``perf stat -e instructions`` would
count natively, but this VM exposes no hardware counters: perf reports them unsupported.)

``--profile`` runs the full stack (``intentions``) natively with cProfile (thread CPU time as
the timer; the event-loop thread and the database worker threads) over ``--profile-calls``
calls and prints the top 25 functions by cumulative and by own time, per call. cProfile adds
its own overhead to every Python call, so its microseconds are inflated; read them as shares.

    .venv/bin/python bench/server_instructions.py                  # every variant, ~25 min
    .venv/bin/python bench/server_instructions.py --quick          # servicer, log_warning, intentions
    .venv/bin/python bench/server_instructions.py --variants bare,servicer --jobs 2
    .venv/bin/python bench/server_instructions.py --profile --variants none

Needs ``valgrind``; the mTLS variants start their own Consul
dev agent (.tools/bin/consul) on free loopback ports and stop it by its PID. The last line
printed is one JSON object: ``instructions_per_call`` per variant, ``layer_cost`` (each
variant minus the one before it), ``objects_per_call`` and, with ``--native``, ``native``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SKU = "TEA-SENCHA"
METHOD = "/shop.inventory.v1.InventoryService/GetProduct"
CLIENT = "bench-client"
SERVER = "inventory"
REFS = re.compile(r"I\s+refs:\s+([\d,]+)")
OTLP_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@dataclass(frozen=True)
class Variant:
    name: str
    layers: frozenset[str]  # interceptors kept: status, deadline, metrics, log, tracing, intentions
    plain: bool = False  # grpc.aio.server() instead of MeshServer
    trivial: bool = False  # a constant answer instead of the real servicer
    sync: bool = False  # grpc.server() (a thread pool) instead of grpc.aio: with trivial only
    log_level: str = "INFO"
    tracing: bool = False
    tls: bool = False
    uvloop: bool = False  # the server's event loop is uvloop's, not asyncio's
    against: str = ""  # not a step of the chain: its cost is reported against this variant
    note: str = ""


def _chain() -> list[Variant]:
    steps: list[tuple[str, str, dict[str, Any], str]] = [
        ("bare", "", {"plain": True, "trivial": True}, "grpc.aio.server(), constant answer"),
        ("servicer", "", {"plain": True}, "+ InventoryServicer, SQLite through the pool"),
        ("mesh", "", {}, "MeshServer (health, reflection), no interceptor"),
        ("status", "status", {}, "+ StatusInterceptor"),
        ("deadline", "deadline", {}, "+ DeadlineInterceptor"),
        ("metrics", "metrics", {}, "+ MetricsServerInterceptor"),
        ("log_warning", "log", {"log_level": "WARNING"}, "+ RPC log at WARNING (= bench/gateway.py)"),
        ("log_info", "", {}, "the RPC log at INFO: a JSON line per call"),
        ("tracing", "tracing", {"tracing": True}, "+ tracing, OTLP batch export"),
        ("tls", "", {"tracing": True, "tls": True}, "+ mTLS (Connect CA), no intentions guard"),
        ("intentions", "intentions", {"tracing": True, "tls": True}, "+ IntentionGuard: the full stack"),
    ]
    layers: set[str] = set()
    chain = []
    for name, layer, options, note in steps:
        if layer:
            layers.add(layer)
        chain.append(Variant(name, frozenset(layers), note=note, **options))
    # Not steps of the chain, each costed against its twin: the sync server's own cost, and
    # the same servers on uvloop's event loop instead of asyncio's (bare, the traced stack).
    twin = {v.name: v for v in chain}
    chain += [
        replace(twin["bare"], name="bare_sync", sync=True, against="bare", note="grpc.server(), thread pool"),
        replace(twin["bare"], name="bare_uvloop", uvloop=True, against="bare", note="bare, uvloop"),
        replace(
            twin["tracing"], name="tracing_uvloop", uvloop=True, against="tracing", note="tracing, uvloop"
        ),
    ]
    return chain


VARIANTS = {v.name: v for v in _chain()}
QUICK = ("servicer", "log_warning", "intentions")


# -- the server (run under callgrind) ---------------------------------------------------------


def serve(variant: Variant) -> None:
    """Run inventory as ``python -m services.inventory`` does, with this variant's layers."""
    import grpc
    import grpc.aio

    import mesh.app as mesh_app
    import services.common.app as app
    from mesh.connect.guard import IntentionGuard
    from mesh.logs.server import RpcLogServerInterceptor
    from mesh.metrics.server import MetricsServerInterceptor
    from mesh.server import MeshServer, ServerTelemetry
    from mesh.server.deadline import DeadlineInterceptor
    from mesh.server.signals import install_stop_signals
    from mesh.tracing.server import TracingServerInterceptor
    from services.common.errors import StatusInterceptor
    from services.inventory.__main__ import build
    from services.inventory.settings import inventory_settings_from_env
    from shop.inventory.v1 import inventory_pb2 as pb
    from shop.inventory.v1 import inventory_pb2_grpc

    kinds = {
        DeadlineInterceptor: "deadline",
        TracingServerInterceptor: "tracing",
        MetricsServerInterceptor: "metrics",
        RpcLogServerInterceptor: "log",
        IntentionGuard: "intentions",
        StatusInterceptor: "status",
    }

    def kind(layer: Any) -> str:
        return next(name for cls, name in kinds.items() if isinstance(layer, cls))

    class Peeled(MeshServer):
        def interceptor_stack(self) -> list[grpc.aio.ServerInterceptor]:
            return [layer for layer in super().interceptor_stack() if kind(layer) in variant.layers]

    class Constant(inventory_pb2_grpc.InventoryServiceServicer):  # type: ignore[misc]
        answer = pb.GetProductResponse(product=pb.Product(sku=SKU, name="Sencha", stock=1))

        async def GetProduct(self, request: Any, context: Any) -> Any:
            return self.answer

    class SyncConstant(inventory_pb2_grpc.InventoryServiceServicer):  # type: ignore[misc]
        def GetProduct(self, request: Any, context: Any) -> Any:
            return Constant.answer

    async def built(context: app.ServiceContext) -> Any:
        services = await build(context, own=inventory_settings_from_env(os.environ))
        if not variant.trivial:
            return services
        servicer = SyncConstant() if variant.sync else Constant()
        return [
            app.HostedService(
                services[0].name,
                lambda server: inventory_pb2_grpc.add_InventoryServiceServicer_to_server(servicer, server),
            )
        ]

    async def serve_peeled(
        settings: Any,
        services: Sequence[Any],
        *,
        telemetry: ServerTelemetry | None = None,
        status: Any = None,
        hooks: Sequence[Any] = (),  # registration is left out: Consul's checks would be counted
        meta: dict[str, str] | None = None,
        security: Any = None,
    ) -> None:
        profiling = _Profiling.install(os.environ.get("BENCH_PROFILE", ""))
        loop = asyncio.get_running_loop()
        if variant.sync:
            from concurrent.futures import ThreadPoolExecutor

            sync_server = grpc.server(ThreadPoolExecutor(max_workers=10))
            for service in services:
                service.register(sync_server)
            port = sync_server.add_insecure_port(f"{settings.host}:{settings.port}")
            sync_server.start()
            print(port, flush=True)
            stopped = asyncio.Event()
            loop.add_signal_handler(signal.SIGTERM, stopped.set)
            await stopped.wait()
            sync_server.stop(0).wait()
        elif variant.plain:
            server = grpc.aio.server()
            for service in services:
                service.register(server)
            port = server.add_insecure_port(f"{settings.host}:{settings.port}")
            await server.start()
            print(port, flush=True)
            stop = asyncio.Event()
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            await stop.wait()
            await server.stop(0)
        else:
            mesh = Peeled(
                settings, services, telemetry=telemetry or ServerTelemetry(), status=status, security=security
            )
            print(await mesh.start(), flush=True)
            install_stop_signals(loop, mesh.stop)
            await mesh.wait_for_termination()
        if profiling is not None:
            profiling.close()

    mesh_app.serve = serve_peeled  # type: ignore[assignment]
    settings = app.service_settings_from_env(SERVER, os.environ)
    app.configure_logging(SERVER, settings.log_level)
    running = app.run(settings, ROOT / "services/inventory/migrations", built)
    if variant.uvloop:
        import uvloop

        uvloop.run(running)
    else:
        asyncio.run(running)


class _Profiling:
    """cProfile on the loop thread and the database workers, toggled by SIGUSR1 / SIGUSR2."""

    def __init__(self, path: str) -> None:
        import cProfile
        import threading

        from services.common.database import Database

        self.path = path
        self.main = cProfile.Profile(time.thread_time)
        self.workers: list[Any] = []
        self.on = False
        local = threading.local()
        original = Database._transact_with_retries
        profiling = self

        def profiled(database: Database, work: Any) -> Any:
            if not profiling.on:
                return original(database, work)
            profiler = getattr(local, "profiler", None)
            if profiler is None:
                profiler = local.profiler = cProfile.Profile(time.thread_time)
                profiling.workers.append(profiler)
            profiler.enable()
            try:
                return original(database, work)
            finally:
                profiler.disable()

        Database._transact_with_retries = profiled  # type: ignore[method-assign]

    @classmethod
    def install(cls, path: str) -> _Profiling | None:
        if not path:
            return None
        profiling = cls(path)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, profiling.start)
        loop.add_signal_handler(signal.SIGUSR2, profiling.stop)
        return profiling

    def start(self) -> None:
        self.on = True
        self.main.enable()

    def stop(self) -> None:
        import pstats

        self.main.disable()
        self.on = False
        stats = pstats.Stats(self.main)
        for worker in self.workers:
            stats.add(worker)
        stats.dump_stats(self.path + ".tmp")
        os.replace(self.path + ".tmp", self.path)

    def close(self) -> None:
        return None


# -- the driver --------------------------------------------------------------------------------


@dataclass
class Shared:
    """What every server run needs: a work directory, JWT key, OTLP sink, Consul and identity."""

    workdir: Path
    env: dict[str, str]
    sink_port: int = 0
    consul: str = ""
    identity: Any = None


def server_env(shared: Shared, variant: Variant, data: Path) -> dict[str, str]:
    env = dict(shared.env)
    env.update(
        MESH_PORT="0",
        MESH_DATA_DIR=str(data),
        INVENTORY_SEED_DEMO="1",
        MESH_LOG_LEVEL=variant.log_level,
        MESH_GRACE_SECONDS="0",
        MESH_DISCOVERY="static",
    )
    if variant.tls:
        env.update(CONSUL_HTTP_ADDR=shared.consul)
    else:
        env.update(MESH_INSECURE="1")
    if variant.tracing:
        env.update(
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{shared.sink_port}",
            OTEL_EXPORTER_OTLP_INSECURE="true",
        )
    else:
        env.update(OTEL_SDK_DISABLED="true")
    return env


async def drive(
    shared: Shared, variant: Variant, port: int, warmup: int, calls: int, concurrency: int
) -> None:
    """``warmup`` calls one at a time, then ``calls`` calls at ``concurrency``."""
    from mesh.channel import mesh_channel
    from mesh.registry.static import StaticDiscovery
    from shop.inventory.v1 import inventory_pb2 as pb

    discovery = StaticDiscovery({SERVER: [f"127.0.0.1:{port}"]})
    identity = shared.identity if variant.tls else None
    channel = mesh_channel(SERVER, discovery, identity=identity)
    call = channel.unary_unary(
        METHOD,
        request_serializer=pb.GetProductRequest.SerializeToString,
        response_deserializer=pb.GetProductResponse.FromString,
        _registered_method=True,
    )
    request = pb.GetProductRequest(sku=SKU)
    answer = await call(request, timeout=60)
    assert answer.product.sku == SKU, answer
    for _ in range(warmup - 1):
        await call(request, timeout=60)
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call(request, timeout=60)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await channel.close()


async def start_server(
    command: list[str], env: dict[str, str], stderr_path: Path
) -> tuple[asyncio.subprocess.Process, int]:
    stderr = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process = await asyncio.create_subprocess_exec(
            *command, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr
        )
    finally:
        os.close(stderr)
    assert process.stdout is not None
    line = await process.stdout.readline()
    if not line.strip():
        await process.wait()
        tail = (await asyncio.to_thread(stderr_path.read_text, errors="replace"))[-3000:]
        raise RuntimeError(f"server exited with {process.returncode} before it listened:\n{tail}")
    return process, int(line)


async def stop_server(process: asyncio.subprocess.Process, grace: float) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)  # by its PID
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        process.kill()
        await process.wait()


async def callgrind_run(
    shared: Shared, variant: Variant, calls: int, warmup: int, concurrency: int
) -> tuple[int, Path]:
    """Instructions the server executed for start-up, ``warmup + calls`` calls and shutdown."""
    run = Path(tempfile.mkdtemp(prefix=f"{variant.name}-{calls}-", dir=shared.workdir))
    out = run / "callgrind.out"
    vglog = run / "valgrind.log"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        f"--log-file={vglog}",
        sys.executable,
        __file__,
        "--serve",
        variant.name,
    ]
    process, port = await start_server(command, server_env(shared, variant, run / "data"), run / "stderr")
    try:
        await drive(shared, variant, port, warmup, calls, concurrency)
    finally:
        await stop_server(process, 600)
    found = REFS.search(vglog.read_text(errors="replace"))
    if process.returncode != 0 or found is None:
        tail = (run / "stderr").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{variant.name} x{calls}: exit {process.returncode}\n{tail}")
    return int(found.group(1).replace(",", "")), out


def self_costs(path: Path) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """Self instructions per ELF object and per (object, function) of one callgrind output."""
    objects: collections.Counter[str] = collections.Counter()
    functions: collections.Counter[str] = collections.Counter()
    names: dict[str, dict[str, str]] = {"ob": {}, "fn": {}}
    current = {"ob": "?", "fn": "?"}
    skip_next = False
    spec = re.compile(r"^(c?)(ob|fn)=(?:\((\d+)\))?\s*(.*)$")
    with open(path, errors="replace") as lines:
        for line in lines:
            first = line[:1]
            if first.isdigit() or first in "+-*":
                if skip_next:  # the inclusive cost of a call, already counted in the callee
                    skip_next = False
                    continue
                cost = int(line.split()[-1])
                objects[current["ob"]] += cost
                functions[f"{current['fn']} [{current['ob']}]"] += cost
                continue
            if line.startswith("calls="):
                skip_next = True
                continue
            match = spec.match(line)
            if match is None:
                continue
            callee, key, number, name = match.groups()
            table = names[key]
            if number is not None:
                if name:
                    table[number] = name.strip()
                name = table.get(number, number)
            if not callee:
                current[key] = Path(name).name if key == "ob" else name.strip()
                if key == "ob":
                    current["fn"] = "?"
    return objects, functions


def short_object(name: str) -> str:
    if name.startswith("cygrpc"):
        return "cygrpc (grpc-core + Cython)"
    if name.startswith("libpython") or name.startswith("python3"):
        return "python interpreter"
    if name.startswith("_sqlite3") or name.startswith("libsqlite3"):
        return "sqlite"
    if name.startswith("libc.so") or name.startswith("libc-"):
        return "libc"
    if name.startswith("_message") or "upb" in name or "protobuf" in name:
        return "protobuf (upb)"
    return name.split(".cpython")[0].split(".so")[0]


async def measure_variant(
    shared: Shared, variant: Variant, low: int, high: int, warmup: int, concurrency: int
) -> dict[str, Any]:
    (low_count, low_out), (high_count, high_out) = [
        await callgrind_run(shared, variant, calls, warmup, concurrency) for calls in (low, high)
    ]
    per_call = (high_count - low_count) / (high - low)
    low_objects, low_functions = await asyncio.to_thread(self_costs, low_out)
    high_objects, high_functions = await asyncio.to_thread(self_costs, high_out)
    grouped: collections.Counter[str] = collections.Counter()
    for name in set(low_objects) | set(high_objects):
        grouped[short_object(name)] += (high_objects[name] - low_objects[name]) / (high - low)
    functions = {
        name: (high_functions[name] - low_functions[name]) / (high - low)
        for name in set(high_functions) | set(low_functions)
    }
    top = sorted(functions.items(), key=lambda item: -item[1])[:20]
    for path in (low_out, high_out):
        path.unlink(missing_ok=True)
    print(f"{variant.name}: {per_call:,.0f} instructions per call", file=sys.stderr, flush=True)
    return {
        "per_call": per_call,
        "objects": {k: round(v) for k, v in grouped.most_common() if abs(v) >= 500},
        "functions": [(name, round(cost)) for name, cost in top],
    }


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def native_run(shared: Shared, variant: Variant, calls: int, concurrency: int) -> dict[str, float]:
    """Server CPU per call natively: the median of three windows of ``calls`` (moves with the load).

    The counter is /proc's utime + stime (10 ms ticks): ``calls`` should keep a window above 0.5 s.
    """
    run = Path(tempfile.mkdtemp(prefix=f"native-{variant.name}-", dir=shared.workdir))
    command = [sys.executable, __file__, "--serve", variant.name]
    process, port = await start_server(command, server_env(shared, variant, run / "data"), run / "stderr")
    windows = []
    try:
        await drive(shared, variant, port, 300, 300, concurrency)
        for _ in range(3):
            began = cpu_seconds(process.pid)
            await drive(shared, variant, port, 1, calls, concurrency)
            windows.append((cpu_seconds(process.pid) - began) / (calls + 1) * 1e6)
    finally:
        await stop_server(process, 30)
    return {"cpu_us_per_call": round(statistics.median(windows), 1)}


async def profile(shared: Shared, calls: int, concurrency: int, top: int) -> None:
    """cProfile of the full stack (see the module docstring); prints two tables per call."""
    import pstats

    variant = VARIANTS["intentions"]
    run = Path(tempfile.mkdtemp(prefix="profile-", dir=shared.workdir))
    stats_path = run / "server.pstats"
    env = dict(server_env(shared, variant, run / "data"), BENCH_PROFILE=str(stats_path))
    command = [sys.executable, __file__, "--serve", variant.name]
    process, port = await start_server(command, env, run / "stderr")
    try:
        await drive(shared, variant, port, 500, 500, concurrency)
        process.send_signal(signal.SIGUSR1)
        await asyncio.sleep(0.5)
        began = cpu_seconds(process.pid)
        await drive(shared, variant, port, 0, calls, concurrency)
        cpu = cpu_seconds(process.pid) - began
        process.send_signal(signal.SIGUSR2)
        for _ in range(100):
            if stats_path.exists():
                break
            await asyncio.sleep(0.1)
    finally:
        await stop_server(process, 30)
    stats = pstats.Stats(str(stats_path))
    print(
        f"\ncProfile of the full stack (intentions), {calls} calls at concurrency {concurrency}; "
        f"server CPU under the profiler {cpu / calls * 1e6:.0f} us per call",
        file=sys.stderr,
    )
    rows = stats.stats  # type: ignore[attr-defined]  # {(file, line, name): (cc, nc, tt, ct, callers)}

    def label(key: tuple[str, int, str]) -> str:
        file, line, name = key
        path = file
        for prefix in (
            str(ROOT) + "/",
            f"{sys.base_prefix}/lib/python{sys.version_info[0]}.{sys.version_info[1]}/",
        ):
            path = path.replace(prefix, "")
        path = re.sub(r".*site-packages/", "", path)
        return f"{path}:{line}({name})" if line else name

    for title, index in (("cumulative", 3), ("own", 2)):
        print(f"\ntop {top} by {title} time, per call:", file=sys.stderr)
        print(f"{'us/call':>9} {'own us':>8} {'calls/call':>10}  function", file=sys.stderr)
        ordered = sorted(rows.items(), key=lambda item: -item[1][index])[:top]
        for key, (_, nc, tt, ct, _) in ordered:
            value = ct if index == 3 else tt
            print(
                f"{value / calls * 1e6:9.1f} {tt / calls * 1e6:8.1f} {nc / calls:10.2f}  {label(key)}",
                file=sys.stderr,
            )


async def otlp_sink() -> tuple[Any, int]:
    """A gRPC server that accepts OTLP trace exports and drops them."""
    import grpc
    import grpc.aio

    async def export(request: bytes, context: Any) -> bytes:
        return b""  # an empty ExportTraceServiceResponse

    service, method = OTLP_EXPORT.strip("/").split("/")
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        service, {method: grpc.unary_unary_rpc_method_handler(export)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def bench(options: argparse.Namespace, variants: list[Variant]) -> dict[str, Any]:
    from mesh.identity import generate_keypair

    workdir = Path(tempfile.mkdtemp(prefix="bench-server-instructions-"))
    _, public = generate_keypair(workdir / "keys")
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "GATEWAY_", "OTEL_", "CONSUL_"))
    }
    base.update(PYTHONPATH=str(ROOT), MESH_JWT_PUBLIC_KEY_FILE=str(public))
    shared = Shared(workdir, base)
    sink, shared.sink_port = await otlp_sink()
    agent = client = None
    try:
        if options.profile or any(v.tls for v in variants):
            from mesh.connect.settings import SecuritySettings
            from mesh.connect.setup import connect_workload
            from mesh.registry.acl import ConsulAcl
            from mesh.registry.dev_agent import ConsulDevAgent, find_consul

            agent = ConsulDevAgent(find_consul(ROOT), workdir / "consul.log").start()
            shared.consul = agent.http_addr
            ConsulAcl(agent.http_addr).set_intention(CLIENT, SERVER, "allow")
            client = await connect_workload(CLIENT, agent.http_addr, SecuritySettings())
            assert client is not None
            shared.identity = client.identity
        results: dict[str, dict[str, Any]] = {}
        gate = asyncio.Semaphore(options.jobs)

        async def one(variant: Variant) -> None:
            async with gate:
                results[variant.name] = await measure_variant(
                    shared, variant, options.low, options.high, options.warmup, options.concurrency
                )

        await asyncio.gather(*(one(v) for v in variants))
        native: dict[str, dict[str, float]] = {}
        if options.native:
            for variant in variants:
                native[variant.name] = await native_run(
                    shared, variant, options.native_calls, options.concurrency
                )
        if options.profile:
            await profile(shared, options.profile_calls, options.concurrency, 25)
    finally:
        if client is not None:
            await client.close()
        if agent is not None:
            agent.stop()  # by its PID
        await sink.stop(None)
        if not options.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return report(variants, results, native, options)


def report(
    variants: list[Variant],
    results: dict[str, dict[str, Any]],
    native: dict[str, dict[str, float]],
    options: argparse.Namespace,
) -> dict[str, Any]:
    if not results:
        return {}
    chain = [v for v in variants if v.name in results]
    print(f"\n{'variant':<12} {'instr/call':>11} {'layer':>10}  {'native cpu us':>13}  what", file=sys.stderr)
    layer: dict[str, float] = {}
    previous = None
    for v in chain:
        count = results[v.name]["per_call"]
        if v.against:
            base = results.get(v.against, {}).get("per_call")
            layer[v.name] = count - base if base is not None else count  # not against the chain
        else:
            layer[v.name] = count - previous if previous is not None else count
        cpu = native.get(v.name, {}).get("cpu_us_per_call")
        cpu_text = f"{cpu:13.0f}" if cpu is not None else f"{'':13}"
        print(f"{v.name:<12} {count:11,.0f} {layer[v.name]:+10,.0f}  {cpu_text}  {v.note}", file=sys.stderr)
        previous = count if not v.against else previous
    for v in chain:
        print(f"\n{v.name}: instructions per call by object", file=sys.stderr)
        for name, cost in results[v.name]["objects"].items():
            print(f"  {cost:11,}  {name}", file=sys.stderr)
        if options.functions:
            print("  top C functions (self):", file=sys.stderr)
            for name, cost in results[v.name]["functions"]:
                print(f"  {cost:11,}  {name}", file=sys.stderr)
    return {
        "instructions_per_call": {v.name: round(results[v.name]["per_call"]) for v in chain},
        "layer_cost": {name: round(cost) for name, cost in layer.items()},
        "objects_per_call": {v.name: results[v.name]["objects"] for v in chain},
        "native": native or None,
        "calls": [options.low, options.high],
        "warmup": options.warmup,
        "concurrency": options.concurrency,
        "python": sys.version.split()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK)}; 100 and 500 calls")
    parser.add_argument("--variants", default=None, help="comma-separated, from " + ", ".join(VARIANTS))
    parser.add_argument(
        "--low", type=int, default=None, help="calls of the short run (default 200; quick 100)"
    )
    parser.add_argument(
        "--high", type=int, default=None, help="calls of the long run (default 1000; quick 500)"
    )
    parser.add_argument("--warmup", type=int, default=50, help="calls one at a time before measuring")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=1, help="variants measured at once (one core each)")
    parser.add_argument("--functions", action="store_true", help="also print the top C functions")
    parser.add_argument("--native", action="store_true", help="also CPU and perf instructions:u natively")
    parser.add_argument("--native-calls", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="cProfile the full stack natively")
    parser.add_argument("--profile-calls", type=int, default=3000)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    parser.add_argument("--serve", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        serve(VARIANTS[options.serve])
        return
    chosen = options.variants or (",".join(QUICK) if options.quick else ",".join(VARIANTS))
    names = [] if chosen == "none" else [v for v in chosen.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)} (or none)")
    if names and shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (Debian: apt-get install valgrind)")
    options.low = options.low or (100 if options.quick else 200)
    options.high = options.high or (500 if options.quick else 1000)
    variants = [VARIANTS[name] for name in VARIANTS if name in names]  # chain order
    started = time.monotonic()
    result = asyncio.run(bench(options, variants))
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
