"""What mTLS costs per call: the mesh channel to an mTLS server vs the same server in plaintext.

Two server processes of the same kind (a MeshServer hosting one echo method): one with
mTLS from a Consul dev agent's Connect CA (``security=``, so its intention guard runs too),
one without. The client is one MeshChannel per mode (static discovery, one endpoint each),
the mTLS one with its own workload identity, at concurrency 64 with a tiny unary call:

  mtls       MeshChannel(identity=...) -> MeshServer(security=...)
  plaintext  MeshChannel -> MeshServer

Runs are interleaved (the order alternates every round, an even number of rounds) so drift of the machine hits both
alike; ``ratio_vs_plaintext`` is the median of the per-round ratios (mtls / plaintext calls/s).
p99 latency is over every call that ended inside a mode's measured windows. Handshakes come
from the mTLS server's credentials (the counter its certificate fetcher keeps, read over the
channel itself, which adds none): those made while the modes were measured, per 10,000
mTLS calls; the connection of the warm-up is counted apart (``handshakes_warmup``).

The run starts its own Consul dev agent (.tools/bin/consul, free loopback ports, log in a
temporary directory) and stops it, and both servers, by PID.

    .venv/bin/python bench/mtls.py            # 10 rounds x 4 s per mode, under 2 min
    .venv/bin/python bench/mtls.py --quick    # 6 rounds x 1.5 s per mode, ~25 s

The last line printed is one JSON object with ``ratio_vs_plaintext``, ``mtls_calls_per_s``,
``plaintext_calls_per_s``, ``mtls_p99_ms``, ``plaintext_p99_ms``, ``handshakes`` and
``handshakes_per_10k_calls``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402
from mesh_overhead import CONCURRENCY  # noqa: E402

from mesh.channel import mesh_channel  # noqa: E402
from mesh.config import ServerSettings  # noqa: E402
from mesh.connect.settings import SecuritySettings  # noqa: E402
from mesh.connect.setup import connect_workload  # noqa: E402
from mesh.registry.acl import ConsulAcl  # noqa: E402
from mesh.registry.dev_agent import ConsulDevAgent, find_consul  # noqa: E402
from mesh.registry.static import StaticDiscovery  # noqa: E402
from mesh.server import HostedService, MeshServer  # noqa: E402

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Echo"
HANDSHAKES = f"/{SERVICE}/Handshakes"
SERVER = "echo"  # the mTLS server's identity, and the name its channel dials it by
CLIENT = "bench-client"
MODES = ("mtls", "plaintext")


async def serve(mode: str, consul: str) -> None:
    """One benchmark server: a MeshServer echoing the request; prints its port, runs until SIGTERM."""
    workload = await connect_workload(SERVER, consul, SecuritySettings()) if mode == "mtls" else None

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def handshakes(request: bytes, context: Any) -> bytes:
        return str(workload.identity.handshakes if workload is not None else 0).encode()

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Handshakes": grpc.unary_unary_rpc_method_handler(handshakes),
        },
    )
    server = MeshServer(
        ServerSettings(SERVER, 0, grace_seconds=0),
        [HostedService(SERVICE, lambda s: s.add_generic_rpc_handlers((handler,)))],
        security=workload,
    )
    port = await server.start()
    print(port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)
    if workload is not None:
        await workload.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` so far (as bench/gateway.py reads it; that module's
    name would shadow the project's ``gateway`` package here)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(mode: str, consul: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, "--consul", consul],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.strip():
        process.wait(5)
        raise RuntimeError(f"the {mode} server exited with {process.returncode} before it listened")
    return process, int(line)


def stop_process(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


Call = Callable[..., Awaitable[Any]]


@dataclass
class Run:
    """One measured run of one mode."""

    rate: float  # calls/s inside the window
    client_cpu_us: float  # client CPU per call inside the window
    server_cpu_us: float  # server CPU per call inside the window
    latencies_ms: list[float] = field(repr=False)  # every call that ended inside the window
    calls_made: int  # every call of the run, warm-up included


async def measure(call: Call, server_pid: int, seconds: float, warmup: float) -> Run:
    """Calls per second, CPU per call and per-call latency over ``seconds`` (after ``warmup``)."""
    count = 0
    running = True
    window: list[float] | None = None  # latencies, collected only while measuring
    clock = time.perf_counter

    async def worker() -> None:
        nonlocal count
        while running:
            began = clock()
            await call(b"x")
            count += 1
            if window is not None:
                window.append(clock() - began)

    workers = [asyncio.ensure_future(worker()) for _ in range(CONCURRENCY)]
    await asyncio.sleep(warmup)
    window = []
    start_count, start, start_cpu = count, clock(), time.process_time()
    start_server_cpu = cpu_seconds(server_pid)
    await asyncio.sleep(seconds)
    latencies, window = window, None
    calls, elapsed = count - start_count, clock() - start
    cpu, server_cpu = time.process_time() - start_cpu, cpu_seconds(server_pid) - start_server_cpu
    running = False
    await asyncio.gather(*workers)
    return Run(
        calls / elapsed,
        cpu / max(calls, 1) * 1e6,
        server_cpu / max(calls, 1) * 1e6,
        [x * 1000 for x in latencies],
        count,
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def bench(agent: ConsulDevAgent, rounds: int, seconds: float, warmup: float) -> dict[str, Any]:
    ConsulAcl(agent.http_addr).set_intention(CLIENT, SERVER, "allow")
    processes: dict[str, subprocess.Popen[str]] = {}
    client = None
    try:
        ports: dict[str, int] = {}
        for mode in MODES:
            processes[mode], ports[mode] = start_server(mode, agent.http_addr)
        client = await connect_workload(CLIENT, agent.http_addr, SecuritySettings())
        assert client is not None
        discovery = StaticDiscovery(
            {SERVER: [f"127.0.0.1:{ports['mtls']}"], "plaintext": [f"127.0.0.1:{ports['plaintext']}"]}
        )
        channels = {
            "mtls": mesh_channel(SERVER, discovery, identity=client.identity),
            "plaintext": mesh_channel("plaintext", discovery),
        }
        calls = {mode: ch.unary_unary(METHOD, _registered_method=True) for mode, ch in channels.items()}
        handshake_count = channels["mtls"].unary_unary(HANDSHAKES, _registered_method=True)

        async def handshakes() -> int:
            return int(await handshake_count(b"", timeout=5))

        for mode, call in calls.items():  # connect both before measuring
            for _ in range(50):
                await call(b"x", timeout=5)
            print(f"warm: {mode}", file=sys.stderr)
        at_start = await handshakes()

        runs: dict[str, list[Run]] = {mode: [] for mode in MODES}
        for round_no in range(rounds):
            order = MODES if round_no % 2 == 0 else MODES[::-1]
            for mode in order:
                runs[mode].append(await measure(calls[mode], processes[mode].pid, seconds, warmup))
            print(
                f"round {round_no + 1}/{rounds}: "
                + "  ".join(
                    f"{m}={runs[m][-1].rate:.0f}/s p99={percentile(runs[m][-1].latencies_ms, 0.99):.1f}ms "
                    f"({runs[m][-1].client_cpu_us:.0f}us client, {runs[m][-1].server_cpu_us:.0f}us server cpu)"
                    for m in MODES
                ),
                file=sys.stderr,
            )
        made = await handshakes() - at_start
        for channel in channels.values():
            await channel.close()
        ratios = [m.rate / p.rate for m, p in zip(runs["mtls"], runs["plaintext"], strict=True)]
        mtls_calls = sum(run.calls_made for run in runs["mtls"])

        def median(mode: str, value: Callable[[Run], float]) -> float:
            return statistics.median(value(run) for run in runs[mode])

        def pooled(mode: str, fraction: float) -> float:
            return round(percentile([x for run in runs[mode] for x in run.latencies_ms], fraction), 2)

        return {
            "ratio_vs_plaintext": round(statistics.median(ratios), 3),
            "mtls_calls_per_s": round(median("mtls", lambda r: r.rate)),
            "plaintext_calls_per_s": round(median("plaintext", lambda r: r.rate)),
            "mtls_p99_ms": pooled("mtls", 0.99),
            "plaintext_p99_ms": pooled("plaintext", 0.99),
            "mtls_p50_ms": pooled("mtls", 0.50),
            "plaintext_p50_ms": pooled("plaintext", 0.50),
            "handshakes": made,
            "handshakes_per_10k_calls": round(made / max(mtls_calls, 1) * 10_000, 3),
            "handshakes_warmup": at_start,
            "mtls_calls": mtls_calls,
            "client_cpu_us_per_call": {m: round(median(m, lambda r: r.client_cpu_us), 1) for m in MODES},
            "server_cpu_us_per_call": {m: round(median(m, lambda r: r.server_cpu_us), 1) for m in MODES},
            "ratios_per_round": [round(x, 3) for x in ratios],
            "concurrency": CONCURRENCY,
            "rounds": rounds,
            "seconds_per_run": seconds,
            "cpus": os.cpu_count(),
            "grpcio": grpc.__version__,
        }
    finally:
        if client is not None:
            await client.close()
        for process in processes.values():
            stop_process(process)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="6 rounds of 1.5 s per mode (under 60 s)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--consul", default="", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        asyncio.run(serve(options.serve, options.consul))
        return
    rounds = options.rounds or (6 if options.quick else 10)
    seconds = options.seconds or (1.5 if options.quick else 4.0)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-mtls-") as workdir:
        agent = ConsulDevAgent(find_consul(ROOT), Path(workdir) / "consul.log").start()
        try:
            result = asyncio.run(bench(agent, rounds, seconds, warmup=0.3 if options.quick else 1.0))
        finally:
            agent.stop()  # by its PID
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    result["quick"] = options.quick
    print(json.dumps(result))


if __name__ == "__main__":
    main()
