"""Client instructions per call, counted by callgrind: the steady twin of bench/interceptors.py.

Throughput and CPU time on this shared 2-core machine swing by 2x between minutes (the host,
not the code), so the ratios of bench/interceptors.py need many interleaved rounds and still
move by several percent. Valgrind's callgrind counts the instructions the client process
executes instead: the same code doing the same calls gives the same count within about 1.5 %
whatever else the machine does. For each variant the client makes ``low`` then ``high``
calls (concurrency 64, against one echo server, as bench/interceptors.py does) in two
separate processes under callgrind; (count(high) - count(low)) / (high - low) is the cost of
one call, free of start-up (imports, channel set-up, warm-up).

Variants are built by the same functions as bench/interceptors.py: ``bare`` (the mesh
channel), ``chain`` (retry policy, timeout, inherited deadline, client metrics and the
resilience collector), ``traced`` (the chain plus client tracing, every call sampled, spans
to the SDK's batch processor and an exporter that drops them) and ``raw`` (plain grpc.aio).
Two more spread the calls over three echo servers, as bench/mesh_overhead.py's (b) does:
``bare_3`` (the mesh channel, its picker choosing among three endpoints) and
``grpc_round_robin`` (grpc.aio with grpc's own round_robin over the same three, an ``ipv4:``
target list), so the picker's cost is counted in instructions, not only in noisy throughput.

    .venv/bin/python bench/call_instructions.py           # about 6 minutes
    .venv/bin/python bench/call_instructions.py --quick   # bare and traced only, under 3 minutes
    .venv/bin/python bench/call_instructions.py --in-process   # no server: the mesh's own path

``--in-process`` replaces the per-endpoint channels with ones that answer at once: what is
left is the mesh's own Python per call (picker, engine, breakers, observers), counted the
same way. With no server, no sockets and no grpc threads it is exact to a few instructions
run to run, where the loopback counts move by a few percent with the machine's load: it is
the figure to compare two versions of the channel by.

Start-up under valgrind is most of each run, so ``--quick`` saves time by measuring fewer
variants (200 and 1,000 calls); the counts per call agree with a full run within ~1.5 %.

Needs ``valgrind`` (Debian package). The last line printed is one JSON object:
``instructions_per_call`` per variant and ``relative_to_bare`` (variant / bare); with the
three-endpoint variants also ``bare_3_vs_grpc_round_robin`` (instructions, lower is better)
and ``picker_instructions_per_call`` (bare_3 - bare). What it
cannot tell: how instructions turn into throughput when the server shares the two cores
(bench/interceptors.py measures that).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mesh_overhead import CONCURRENCY, METHOD, start_servers  # noqa: E402

VARIANTS = ("raw", "bare", "chain", "traced", "grpc_round_robin", "bare_3")
THREE_ENDPOINTS = ("grpc_round_robin", "bare_3")
REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


async def client(variant: str, calls: int, ports: list[int]) -> None:
    """Make ``calls`` calls through ``variant`` at concurrency 64 (run under callgrind).

    ``ports`` are the echo servers' (0: --in-process); single-endpoint variants use the first.
    """
    import grpc.aio
    from interceptors import CHAIN_POLICY, metrics_observers, traced_observers

    from mesh.channel import mesh_channel
    from mesh.deadline import Deadline, deadline_scope
    from mesh.registry.static import StaticDiscovery
    from mesh.resilience import parse_policy

    targets = [f"127.0.0.1:{port or 1 + index}" for index, port in enumerate(ports)]
    if variant not in THREE_ENDPOINTS:
        targets = targets[:1]
    discovery = StaticDiscovery({variant: targets})
    provider = None
    channel: Any
    if variant == "raw":
        channel = grpc.aio.insecure_channel(targets[0])
    elif variant == "grpc_round_robin":
        channel = grpc.aio.insecure_channel(
            "ipv4:" + ",".join(targets), options=[("grpc.lb_policy_name", "round_robin")]
        )
    elif variant in ("bare", "bare_3"):
        channel = mesh_channel(variant, discovery)
    else:
        observers = metrics_observers()
        if variant == "traced":
            observers, provider = traced_observers()
        channel = mesh_channel(variant, discovery, policy=parse_policy(CHAIN_POLICY), observers=observers)
    if ports[0] == 0:  # --in-process: the mesh's own Python path over a channel that answers at once
        channel._pool._channel_factory = lambda instance: _AnsweringChannel()
    call = channel.unary_unary(METHOD, _registered_method=True)
    for _ in range(100):
        await call(b"x")
    left = calls

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call(b"x")

    # as in bench/interceptors.py: the chain variants run under an inherited deadline
    inherited = None if variant in ("raw", "bare") else Deadline.after(3600)
    with deadline_scope(inherited):
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    await channel.close()
    if provider is not None:
        provider.shutdown()


class _Answered:
    """An awaitable that is already done: a call answered without any transport."""

    def __await__(self) -> Any:
        return iter(())

    def cancel(self) -> bool:
        return False


class _AnsweringChannel:
    """Stands in for a per-endpoint grpc.aio channel in --in-process mode."""

    def get_state(self, try_to_connect: bool = False) -> Any:
        import grpc

        return grpc.ChannelConnectivity.READY

    def unary_unary(self, *args: Any, **kwargs: Any) -> Any:
        return lambda request, **options: _Answered()

    async def close(self, grace: float | None = None) -> None:
        pass


def instructions(variant: str, calls: int, ports: list[int]) -> int:
    """Instructions the client process executed for ``calls`` calls, start-up included."""
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--client",
        variant,
        str(calls),
        ",".join(map(str, ports)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1800, check=False)
    found = REFS.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{variant} x{calls} under callgrind failed:\n{done.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def bench(low: int, high: int, variants: list[str], in_process: bool = False) -> dict[str, Any]:
    servers = 3 if set(variants) & set(THREE_ENDPOINTS) else 1
    processes, ports = ([], [0] * servers) if in_process else start_servers(servers)
    try:
        per_call: dict[str, float] = {}
        for variant in variants:
            counts = [instructions(variant, calls, ports) for calls in (low, high)]
            per_call[variant] = (counts[1] - counts[0]) / (high - low)
            print(f"{variant}: {per_call[variant]:,.0f} instructions per call", file=sys.stderr)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(10)
    bare = per_call.get("bare")
    three: dict[str, Any] = {}
    if "bare_3" in per_call and "grpc_round_robin" in per_call:
        three["bare_3_vs_grpc_round_robin"] = round(per_call["bare_3"] / per_call["grpc_round_robin"], 3)
    if "bare_3" in per_call and bare:
        three["picker_instructions_per_call"] = round(per_call["bare_3"] - bare)  # three vs one
    return {
        "instructions_per_call": {name: round(n) for name, n in per_call.items()},
        "relative_to_bare": {name: round(n / bare, 3) for name, n in per_call.items()} if bare else None,
        **three,
        "calls": [low, high],
        "concurrency": CONCURRENCY,
        "python": sys.version.split()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="bare and traced, 200 and 1000 calls")
    parser.add_argument(
        "--variants", default=None, help="comma-separated, from " + ", ".join(VARIANTS) + " (default: all)"
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="no server: per-endpoint channels answer at once, so only the mesh's own Python path "
        "is counted (deterministic; raw is not applicable)",
    )
    parser.add_argument("--client", nargs=3, metavar=("VARIANT", "CALLS", "PORTS"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.client:
        variant, calls, ports = options.client
        asyncio.run(client(variant, int(calls), [int(port) for port in ports.split(",")]))
        return
    chosen = options.variants or ("bare,traced" if options.quick else ",".join(VARIANTS))
    if options.in_process and not options.variants:
        chosen = chosen.replace("raw,", "").replace("grpc_round_robin,", "")
    variants = [v for v in chosen.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    if shutil.which("valgrind") is None:
        parser.error("valgrind is not installed (Debian: apt-get install valgrind)")
    started = time.monotonic()
    low, high = (200, 1000) if options.quick else (300, 1800)
    result = bench(low, high, variants, options.in_process)
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    result["quick"] = options.quick
    result["in_process"] = options.in_process
    print(json.dumps(result))


if __name__ == "__main__":
    main()
