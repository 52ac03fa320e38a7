"""What the client mode costs a call: grpc.aio (what the mesh channel is built on) against grpc's
synchronous channel driven from the same event loop, and optionally grpclib (pure-Python
HTTP/2), each calling one grpc.aio echo server.

A service's calls to others cost it about as much CPU as the calls it serves, and most of
that is the client library, not the mesh's own code (bench/call_instructions.py counts the
mesh's part). Before anyone swaps the transport under the mesh channel, this measures what the
alternatives cost a caller that lives on an event loop:

``aio``          grpc.aio's channel on uvloop: each completion goes from grpc core's threads to
                 its poller thread, which wakes the loop through a socket.
``sync_future``  grpc's synchronous channel: ``.future()`` per call, its done-callback (on grpc's
                 own thread) hands the reply to the loop with ``call_soon_threadsafe``.
``grpclib``      (``--grpclib``) grpclib's channel: HTTP/2 framed in Python (h2) on the loop's own
                 socket, no threads. Not a project dependency: install it apart, e.g.
                 ``.venv/bin/pip install --target /tmp/grpclib grpclib``, and run with
                 ``PYTHONPATH=/tmp/grpclib``.

Each mode runs in a fresh client process: ``--calls`` calls at each concurrency of
``--concurrency`` after 500 warm-up calls, a 40-byte ``BytesValue`` each way. The client
reports its own CPU (every thread) and context switches per call from ``getrusage``. Modes
alternate within each round (the machine's speed drifts between minutes).

    .venv/bin/python bench/client_modes.py                   # 3 rounds, about a minute
    PYTHONPATH=/tmp/grpclib .venv/bin/python bench/client_modes.py --grpclib

The last line is one JSON object: per concurrency, the medians over the rounds of
``cpu_us_per_call`` and ``switches_per_call`` per mode, and each mode's CPU as a ratio of
grpc.aio's (``cpu_vs_aio``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.server_modes import SERVER as SERVERS  # noqa: E402

ECHO_SERVER = SERVERS["aio_uvloop"]  # the same bare echo bench/server_modes.py serves

DRIVE = """
import asyncio, json, resource, sys, time, uvloop
from google.protobuf.wrappers_pb2 import BytesValue
MESSAGE = BytesValue(value=b"x" * 40)
async def drive(call, calls, concurrency):
    for _ in range(500):
        await call()
    left = calls
    async def worker():
        nonlocal left
        while left > 0:
            left -= 1
            await call()
    before = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    switches = (after.ru_nvcsw + after.ru_nivcsw) - (before.ru_nvcsw + before.ru_nivcsw)
    print(json.dumps({"cpu_us_per_call": cpu / calls * 1e6, "switches_per_call": switches / calls}))
"""

CLIENT = {
    "aio": DRIVE
    + """
import grpc
async def main(port, calls, concurrency):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.unary_unary(
            "/bench.Echo/Echo",
            request_serializer=BytesValue.SerializeToString,
            response_deserializer=BytesValue.FromString,
        )
        await drive(lambda: method(MESSAGE), calls, concurrency)
uvloop.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
""",
    "sync_future": DRIVE
    + """
import grpc
def settle(future, call):
    if not future.done():
        try:
            future.set_result(call.result())
        except Exception as error:
            future.set_exception(error)
async def main(port, calls, concurrency):
    loop = asyncio.get_running_loop()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    method = channel.unary_unary(
        "/bench.Echo/Echo",
        request_serializer=BytesValue.SerializeToString,
        response_deserializer=BytesValue.FromString,
    )
    def one():
        future = loop.create_future()
        method.future(MESSAGE).add_done_callback(lambda call: loop.call_soon_threadsafe(settle, future, call))
        return future
    await drive(one, calls, concurrency)
    channel.close()
uvloop.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
""",
    "grpclib": DRIVE
    + """
from grpclib.client import Channel, UnaryUnaryMethod
async def main(port, calls, concurrency):
    channel = Channel("127.0.0.1", port)
    method = UnaryUnaryMethod(channel, "/bench.Echo/Echo", BytesValue, BytesValue)
    await drive(lambda: method(MESSAGE), calls, concurrency)
    channel.close()
uvloop.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
""",
}


def measure(mode: str, port: str, calls: int, concurrency: int) -> dict[str, float]:
    """One client process of ``mode``: its CPU and switches per call."""
    done = subprocess.run(
        [sys.executable, "-c", CLIENT[mode], port, str(calls), str(concurrency)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{mode} client failed: {done.stderr[-2000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=6_000)
    parser.add_argument("--concurrency", default="1,16", help="comma-separated levels")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grpclib", action="store_true", help="also grpclib (installed apart)")
    args = parser.parse_args()
    if args.grpclib and importlib.util.find_spec("grpclib") is None:
        parser.error("--grpclib: grpclib is not importable (install it apart, see above)")
    modes = ["aio", "sync_future"] + (["grpclib"] if args.grpclib else [])
    levels = [int(level) for level in args.concurrency.split(",")]
    started = time.monotonic()
    server = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    runs: dict[int, dict[str, list[dict[str, float]]]] = {
        level: {mode: [] for mode in modes} for level in levels
    }
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        for round_ in range(args.rounds):
            for level in levels:
                for mode in modes:
                    figures = measure(mode, port, args.calls, level)
                    runs[level][mode].append(figures)
                    shown = {k: round(v, 2) for k, v in figures.items()}
                    print(
                        f"round {round_ + 1} concurrency {level} {mode}: {json.dumps(shown)}", file=sys.stderr
                    )
    finally:
        server.kill()
        server.wait()

    def median(level: int, mode: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[level][mode])

    result: dict[str, Any] = {
        f"concurrency_{level}": {
            "cpu_us_per_call": {mode: round(median(level, mode, "cpu_us_per_call"), 1) for mode in modes},
            "switches_per_call": {mode: round(median(level, mode, "switches_per_call"), 2) for mode in modes},
            "cpu_vs_aio": {
                mode: round(
                    median(level, mode, "cpu_us_per_call") / median(level, "aio", "cpu_us_per_call"), 3
                )
                for mode in modes
                if mode != "aio"
            },
        }
        for level in levels
    }
    result.update(
        calls=args.calls,
        rounds=args.rounds,
        cpus=os.cpu_count(),
        wall_seconds=round(time.monotonic() - started, 1),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
