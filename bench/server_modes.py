"""What the server mode costs a call: grpc.aio on uvloop (what services run) against grpc's
thread-pool server, both answering a bare echo, measured from the server process's /proc.

A service's own work per call is counted in instructions by bench/server_instructions.py, but
callgrind leaves out the kernel and the hand-offs between threads, and those differ by mode.
A grpc.aio server wakes its event loop through a poller thread for every completion; the
thread-pool server runs the handler on the thread that took the call. This runs both servers
on loopback in turn, each driven by the same grpc.aio client (``--calls`` calls at
``--concurrency``, after a warm-up), and reports per call the server's CPU and its context
switches, by thread, so a choice of server mode for a hot service rests on a measurement.

    .venv/bin/python bench/server_modes.py               # 3 rounds, about a minute
    .venv/bin/python bench/server_modes.py --rounds 5
    .venv/bin/python bench/server_modes.py --experiments=-event_engine_callback_cq   # grpc core's switches

The modes alternate within each round (the machine's speed drifts between minutes). The last
line is one JSON object: the medians over the rounds of ``cpu_us_per_call`` and
``switches_per_call`` per mode, the thread-pool/aio CPU ratio, and the switches per call of
each thread kind (by the thread's name) from the last round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

MODES = ("aio_uvloop", "thread_pool")

SERVER = {
    "aio_uvloop": """
import grpc, uvloop
async def echo(request, context):
    return request
async def main():
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
uvloop.run(main())
""",
    "thread_pool": """
from concurrent import futures
import grpc
def echo(request, context):
    return request
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
handler = grpc.unary_unary_rpc_method_handler(echo)
server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler})])
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
""",
}

CLIENT = """
import asyncio, sys, grpc, uvloop
async def main(port, calls, concurrency):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/bench.Echo/Echo")
        left = calls
        async def worker():
            nonlocal left
            while left > 0:
                left -= 1
                await call(b"x" * 40)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
uvloop.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
"""

TICKS = os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> dict[str, tuple[str, int, float]]:
    """Each thread of ``pid``: its kind, context switches (voluntary and not) and CPU seconds.

    The kind is the thread's name, except ``main`` for the process's first thread: grpc.aio's
    poller thread is named ``python`` like every Python thread, and it is the one to tell apart.
    """
    seen: dict[str, tuple[str, int, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        task = Path(f"/proc/{pid}/task/{tid}")
        try:
            name = "main" if tid == str(pid) else (task / "comm").read_text().strip()
            switches = sum(
                int(line.split()[1])
                for line in (task / "status").read_text().splitlines()
                if "ctxt_switches:" in line  # voluntary and nonvoluntary
            )
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended between listing and reading
            continue
        seen[tid] = (name, switches, (int(fields[11]) + int(fields[12])) / TICKS)
    return seen


def drive(port: str, calls: int, concurrency: int) -> None:
    subprocess.run([sys.executable, "-c", CLIENT, port, str(calls), str(concurrency)], check=True)


def measure(mode: str, calls: int, concurrency: int, experiments: str = "") -> dict[str, Any]:
    """One mode's server under one client run; ``experiments`` is the server's GRPC_EXPERIMENTS."""
    env = dict(os.environ, GRPC_EXPERIMENTS=experiments) if experiments else None
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER[mode]], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        drive(port, min(calls, 1000), concurrency)  # warm-up: connection, first-use paths
        before = threads(server.pid)
        started = time.monotonic()
        drive(port, calls, concurrency)
        wall = time.monotonic() - started
        after = threads(server.pid)
    finally:
        server.kill()
        server.wait()
    by_kind: dict[str, float] = defaultdict(float)
    cpu = switches = 0.0
    for tid, (name, switched, seconds) in after.items():
        _, switched_before, seconds_before = before.get(tid, (name, 0, 0.0))
        cpu += seconds - seconds_before
        switches += switched - switched_before
        by_kind[name] += (switched - switched_before) / calls
    return {
        "cpu_us_per_call": cpu / calls * 1e6,
        "switches_per_call": switches / calls,
        "calls_per_s": calls / wall,
        "switches_per_call_by_thread": {k: round(v, 2) for k, v in sorted(by_kind.items()) if v >= 0.01},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--experiments", default="", help="GRPC_EXPERIMENTS for the servers (grpc core's switches)"
    )
    args = parser.parse_args()
    started = time.monotonic()
    rounds: list[dict[str, dict[str, Any]]] = []
    for _ in range(args.rounds):
        rounds.append({mode: measure(mode, args.calls, args.concurrency, args.experiments) for mode in MODES})
        shown = {
            m: {k: v for k, v in r.items() if k != "switches_per_call_by_thread"}
            for m, r in rounds[-1].items()
        }
        print(json.dumps(shown), file=sys.stderr)

    def median(mode: str, key: str) -> float:
        return statistics.median(r[mode][key] for r in rounds)

    result: dict[str, Any] = {
        "cpu_us_per_call": {mode: round(median(mode, "cpu_us_per_call"), 1) for mode in MODES},
        "switches_per_call": {mode: round(median(mode, "switches_per_call"), 2) for mode in MODES},
        "calls_per_s": {mode: round(median(mode, "calls_per_s")) for mode in MODES},
        "thread_pool_cpu_vs_aio": round(
            median("thread_pool", "cpu_us_per_call") / median("aio_uvloop", "cpu_us_per_call"), 3
        ),
        "switches_per_call_by_thread": {
            mode: rounds[-1][mode]["switches_per_call_by_thread"] for mode in MODES
        },
        "calls": args.calls,
        "experiments": args.experiments,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
