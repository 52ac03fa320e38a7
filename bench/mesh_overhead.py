"""What the Python picker costs: MeshChannel against plain grpc.aio channels.

grpcio has no Python API for resolvers or balancing policies (grpc/grpc#11685), so the mesh
picks an endpoint per call in Python over one grpc.aio channel per endpoint. This measures
what that costs, at concurrency 64 with a tiny unary call:

  (a) MeshChannel over 1 endpoint  vs  a plain grpc.aio channel to the same server
  (b) MeshChannel over 3 endpoints vs  grpc's built-in round_robin over the same 3
      (an ``ipv4:`` target list)

Runs are interleaved (a, b, a, b ... with the order rotated every round) so drift of the
machine hits every variant alike; each ratio is the median of the per-round ratios. Client
CPU per call is reported too, because when the servers are the bottleneck throughput alone
can hide client-side cost.

    .venv/bin/python bench/mesh_overhead.py            # about 3 minutes
    .venv/bin/python bench/mesh_overhead.py --quick    # under 60 s

The last line printed is one JSON object with ``ratio_vs_raw`` and
``ratio_vs_grpc_round_robin`` (targets: >= 0.95 and >= 1.0).
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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mesh.channel import mesh_channel  # noqa: E402
from mesh.registry.static import StaticDiscovery  # noqa: E402

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Echo"
CONCURRENCY = 64


async def serve() -> None:
    """One benchmark server: echoes the request; prints its port, runs until SIGTERM."""

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


def start_servers(count: int) -> tuple[list[subprocess.Popen[str]], list[int]]:
    processes, ports = [], []
    for _ in range(count):
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True, cwd=ROOT
        )
        processes.append(process)
        assert process.stdout is not None
        ports.append(int(process.stdout.readline()))
    return processes, ports


Call = Callable[[bytes], Awaitable[Any]]


async def measure(call: Call, seconds: float, warmup: float) -> tuple[float, float]:
    """Calls per second and client CPU microseconds per call over ``seconds``."""
    count = 0
    running = True

    async def worker() -> None:
        nonlocal count
        while running:
            await call(b"x")
            count += 1

    workers = [asyncio.ensure_future(worker()) for _ in range(CONCURRENCY)]
    await asyncio.sleep(warmup)
    start_count, start, start_cpu = count, time.perf_counter(), time.process_time()
    await asyncio.sleep(seconds)
    calls, elapsed, cpu = count - start_count, time.perf_counter() - start, time.process_time() - start_cpu
    running = False
    await asyncio.gather(*workers)
    return calls / elapsed, cpu / max(calls, 1) * 1e6


async def interleaved(
    calls: dict[str, Call], rounds: int, seconds: float, warmup: float
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each variant measured once per round, the order rotated every round so the machine's
    drift hits every variant alike; calls/s and client CPU µs per call, per variant and round."""
    rates: dict[str, list[float]] = {name: [] for name in calls}
    cpus: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for round_no in range(rounds):
        shift = round_no % len(order)
        for name in order[shift:] + order[:shift]:
            rate, cpu = await measure(calls[name], seconds, warmup)
            rates[name].append(rate)
            cpus[name].append(cpu)
        print(
            f"round {round_no + 1}/{rounds}: "
            + "  ".join(f"{n}={rates[n][-1]:.0f}/s ({cpus[n][-1]:.0f}us cpu)" for n in order),
            file=sys.stderr,
        )
    return rates, cpus


async def bench(rounds: int, seconds: float, warmup: float) -> dict[str, Any]:
    processes, ports = start_servers(3)
    try:
        targets = [f"127.0.0.1:{port}" for port in ports]
        raw = grpc.aio.insecure_channel(targets[0])
        grpc_rr = grpc.aio.insecure_channel(
            "ipv4:" + ",".join(targets), options=[("grpc.lb_policy_name", "round_robin")]
        )
        discovery = StaticDiscovery({"one": targets[:1], "three": targets})
        mesh1 = mesh_channel("one", discovery)
        mesh3 = mesh_channel("three", discovery)
        variants: dict[str, Any] = {"raw": raw, "mesh_1": mesh1, "grpc_round_robin": grpc_rr, "mesh_3": mesh3}
        calls = {
            name: channel.unary_unary(METHOD, _registered_method=True) for name, channel in variants.items()
        }
        await mesh3.wait_for_endpoints(3, within=5)
        for name, call in calls.items():  # connect everything before measuring
            for _ in range(50):
                await call(b"x")
            print(f"warm: {name}", file=sys.stderr)

        rates, cpus = await interleaved(calls, rounds, seconds, warmup)
        vs_raw = [m / r for m, r in zip(rates["mesh_1"], rates["raw"], strict=True)]
        vs_rr = [m / r for m, r in zip(rates["mesh_3"], rates["grpc_round_robin"], strict=True)]
        for channel in variants.values():
            await channel.close()
        return {
            "ratio_vs_raw": round(statistics.median(vs_raw), 3),
            "ratio_vs_grpc_round_robin": round(statistics.median(vs_rr), 3),
            "calls_per_second": {n: round(statistics.median(v)) for n, v in rates.items()},
            "client_cpu_us_per_call": {n: round(statistics.median(v), 1) for n, v in cpus.items()},
            "ratios_per_round": {
                "vs_raw": [round(x, 3) for x in vs_raw],
                "vs_rr": [round(x, 3) for x in vs_rr],
            },
            "concurrency": CONCURRENCY,
            "rounds": rounds,
            "seconds_per_run": seconds,
            "cpus": os.cpu_count(),
            "grpcio": grpc.__version__,
        }
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 rounds of 1.5 s per variant (under 60 s)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        asyncio.run(serve())
        return
    rounds = options.rounds or (5 if options.quick else 9)
    seconds = options.seconds or (1.5 if options.quick else 4.0)
    started = time.monotonic()
    result = asyncio.run(bench(rounds, seconds, warmup=0.3 if options.quick else 1.0))
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    result["quick"] = options.quick
    print(json.dumps(result))


if __name__ == "__main__":
    main()
