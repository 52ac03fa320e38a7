"""xDS clients against the mesh's own channel: what a plain grpcio ``xds:///`` client costs and how
soon it stops calling a frozen instance.

One Consul dev agent, three echo servers registered in it (tests/integration/discovery/
echo_server.py: the mesh's real server, plaintext), and ``mesh xds`` following the agent. Two
phases:

``throughput``  closed loop at concurrency 64, the same tiny unary call through three channels
                over the same three endpoints, in one process: a grpc.aio channel to
                ``xds:///echo`` (grpc core's xds resolver, cluster manager and round_robin, fed
                by ``mesh xds``), tsunagu's MeshChannel (its Python picker) and grpc's static
                ``round_robin`` over an ``ipv4:`` list. Runs are interleaved, the order rotated
                every round; each ratio is the median of the per-round ratios, and the client's
                CPU per call is reported beside it (when the servers set the pace, calls/s
                alone hides client cost).
``freeze``      an xDS client sends 200 calls/s open loop, each with a 3 s timeout; one
                instance is frozen (SIGSTOP: a frozen process keeps its connections, so only
                its failing health check, Consul and then EDS can move traffic off it; the
                timeout is longer than that, so the client's outlier ejection cannot act
                first) and the load runs until 1 s after Consul marks it critical.
                ``freeze_to_last_call_ms`` = start of the last call sent to it (one that timed
                out, or that it answered after the thaw) - the freeze.
                ``freeze_to_critical_ms`` = when Consul first showed it critical. Then it is
                thawed and must serve calls again before the next trial, which freezes the
                next instance.

    .venv/bin/python bench/xds.py            # 9 rounds x 3 s, 20 freezes: about 4 minutes
    .venv/bin/python bench/xds.py --quick    # 3 rounds x 1.5 s, 5 freezes: under 60 s

The last line printed is one JSON object with ``ratio_xds_vs_mesh_channel``,
``ratio_xds_vs_round_robin`` and ``freeze_to_last_call_ms_p50``/``_p99``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.mesh_overhead import CONCURRENCY, interleaved  # noqa: E402
from mesh.channel import mesh_channel  # noqa: E402
from mesh.registry.dev_agent import ConsulDevAgent, find_consul  # noqa: E402
from mesh.registry.static import StaticDiscovery  # noqa: E402
from tests.integration.discovery.conftest import EchoProcess  # noqa: E402
from tests.integration.discovery.echo_server import ECHO  # noqa: E402
from tests.support.processes import free_port  # noqa: E402
from tests.support.xds import ControlPlane  # noqa: E402

FREEZE_RATE = 200.0  # calls per second, open loop
FREEZE_TIMEOUT = 3.0  # longer than Consul needs to see the freeze (interval + timeout)
QUIET_AFTER = 1.0  # seconds of load after Consul marks the instance critical
Call = Callable[[bytes], Awaitable[bytes]]


def start_echo(consul: ConsulDevAgent, workdir: Path, check_interval: float) -> EchoProcess:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "OTEL_", "CONSUL_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        MESH_PORT=str(port),
        MESH_GRACE_SECONDS="2",
        MESH_INSECURE="1",
        MESH_LOG_LEVEL="WARNING",
        MESH_CHECK_INTERVAL_SECONDS=str(check_interval),
        CONSUL_HTTP_ADDR=consul.http_addr,
        ECHO_NAME="echo",
    )
    return EchoProcess(port, env, workdir / f"echo-{port}.log").start()


def passing(consul: ConsulDevAgent) -> set[int]:
    with urllib.request.urlopen(f"{consul.http_addr}/v1/health/service/echo?passing=1", timeout=2) as reply:
        return {row["Service"]["Port"] for row in json.loads(reply.read())}


async def wait_passing(consul: ConsulDevAgent, ports: set[int], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while await asyncio.to_thread(passing, consul) != ports:
        if time.monotonic() > deadline:
            raise TimeoutError(f"echo instances {sorted(ports)} not passing after {within}s")
        await asyncio.sleep(0.05)


async def throughput(targets: list[str], rounds: int, seconds: float, warmup: float) -> dict[str, Any]:
    channels: dict[str, Any] = {
        "xds": grpc.aio.insecure_channel("xds:///echo"),
        "mesh_channel": mesh_channel("echo", StaticDiscovery({"echo": targets})),
        "grpc_round_robin": grpc.aio.insecure_channel(
            "ipv4:" + ",".join(targets), options=[("grpc.lb_policy_name", "round_robin")]
        ),
    }
    calls = {name: ch.unary_unary(ECHO, _registered_method=True) for name, ch in channels.items()}
    for name, call in calls.items():  # every connection up before measuring
        answered = {(await call(b"w", timeout=20)).split(b"|")[0] for _ in range(60)}
        print(f"warm: {name} reached {len(answered)} instances", file=sys.stderr)
    rates, cpus = await interleaved(calls, rounds, seconds, warmup)
    for channel in channels.values():
        await channel.close()
    vs_mesh = [x / m for x, m in zip(rates["xds"], rates["mesh_channel"], strict=True)]
    vs_rr = [x / r for x, r in zip(rates["xds"], rates["grpc_round_robin"], strict=True)]
    return {
        "ratio_xds_vs_mesh_channel": round(statistics.median(vs_mesh), 3),
        "ratio_xds_vs_round_robin": round(statistics.median(vs_rr), 3),
        "calls_per_second": {n: round(statistics.median(v)) for n, v in rates.items()},
        "client_cpu_us_per_call": {n: round(statistics.median(v), 1) for n, v in cpus.items()},
        "ratios_per_round": {
            "xds_vs_mesh_channel": [round(x, 3) for x in vs_mesh],
            "xds_vs_round_robin": [round(x, 3) for x in vs_rr],
        },
    }


async def freeze_trial(consul: ConsulDevAgent, call: Call, victim: EchoProcess) -> dict[str, float]:
    """Freeze ``victim`` under open-loop load; ms from the freeze to the last call sent to it, and to critical.

    Calls leave at FREEZE_RATE whatever becomes of earlier ones (a closed loop would stall
    on the frozen instance and stop sending), each with FREEZE_TIMEOUT, longer than Consul
    needs to mark the instance critical, so the client's own outlier ejection (which counts
    timed-out calls) cannot act first: what moves calls off the instance is its failing
    check, Consul and EDS. A call sent to the frozen instance either times out or, if the
    thaw comes first, is answered late by it; both count.
    """
    label = victim.label
    sent: list[asyncio.Task[tuple[float, bool]]] = []

    async def one() -> tuple[float, bool]:
        started = time.monotonic()
        try:
            answer = await call(b"f", timeout=FREEZE_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            return started, True
        return started, answer.split(b"|")[0] == label

    async def send_until(stop: asyncio.Event) -> None:
        period = 1 / FREEZE_RATE
        next_at = time.monotonic()
        while not stop.is_set():
            sent.append(asyncio.ensure_future(one()))
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    stop = asyncio.Event()
    sender = asyncio.ensure_future(send_until(stop))
    try:
        await asyncio.sleep(0.5)
        before = [task.result() for task in sent if task.done()]
        if not any(to_victim for _, to_victim in before):
            raise RuntimeError(f"instance {victim.port} got no call before its freeze")
        frozen_at = time.monotonic()
        victim.signal(signal.SIGSTOP)
        critical_at = None
        while critical_at is None:
            await asyncio.sleep(0.05)
            if victim.port not in await asyncio.to_thread(passing, consul):
                critical_at = time.monotonic()
            elif time.monotonic() - frozen_at > 30:
                raise RuntimeError(f"instance {victim.port} still passing 30 s after its freeze")
        await asyncio.sleep(QUIET_AFTER)  # calls keep leaving after Consul's verdict
    finally:
        stop.set()
        await sender
        victim.signal(signal.SIGCONT)
    outcomes = await asyncio.gather(*sent)
    last = max(
        (started for started, to_victim in outcomes if to_victim and started >= frozen_at), default=frozen_at
    )
    result = {
        "to_last_call_ms": round((last - frozen_at) * 1000, 1),
        "to_critical_ms": round((critical_at - frozen_at) * 1000, 1),
    }
    # Back in rotation before the next trial: passing again and answering calls.
    deadline = time.monotonic() + 30
    while True:
        answer = await call(b"r", timeout=5)
        if answer.split(b"|")[0] == label and victim.port in await asyncio.to_thread(passing, consul):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"instance {victim.port} did not come back after its thaw")
    return result


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


async def bench(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    consul = ConsulDevAgent(find_consul(ROOT), workdir / "consul.log").start()
    servers: list[EchoProcess] = []
    plane = ControlPlane(consul.http_addr, workdir / "xds")
    started = time.monotonic()
    try:
        servers = [start_echo(consul, workdir, options.check_interval) for _ in range(3)]
        await wait_passing(consul, {s.port for s in servers})
        plane.start()
        os.environ["GRPC_XDS_BOOTSTRAP"] = str(plane.bootstrap)  # read by grpc core at the first xds channel
        phases: dict[str, float] = {"startup": round(time.monotonic() - started, 1)}
        targets = [s.target for s in servers]
        result = await throughput(targets, options.rounds, options.seconds, options.warmup)
        phases["throughput"] = round(time.monotonic() - started - sum(phases.values()), 1)
        channel = grpc.aio.insecure_channel("xds:///echo")
        call = channel.unary_unary(ECHO, _registered_method=True)
        trials = []
        for number in range(options.trials):
            trial = await freeze_trial(consul, call, servers[number % len(servers)])
            print(f"freeze {number + 1}/{options.trials}: {trial}", file=sys.stderr)
            trials.append(trial)
        await channel.close()
        phases["freeze"] = round(time.monotonic() - started - sum(phases.values()), 1)
        to_last = [t["to_last_call_ms"] for t in trials]
        to_critical = [t["to_critical_ms"] for t in trials]
        result.update(
            {
                "freeze_to_last_call_ms_p50": round(statistics.median(to_last), 1),
                "freeze_to_last_call_ms_p99": percentile(to_last, 0.99),
                "freeze_to_critical_ms_p50": round(statistics.median(to_critical), 1),
                "freeze_to_critical_ms_p99": percentile(to_critical, 0.99),
                "freeze_trials": len(trials),
                "trials": {"to_last_call_ms": to_last, "to_critical_ms": to_critical},
                "check_interval_s": options.check_interval,
                "phase_seconds": phases,
            }
        )
        return result
    finally:
        plane.stop()
        for server in servers:
            server.signal(signal.SIGCONT)
            server.terminate(5)
        consul.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds x 1.5 s, 5 freezes (under 60 s)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--trials", type=int)
    parser.add_argument(
        "--check-interval", type=float, default=1.0, help="Consul's gRPC check interval (the shop's: 1 s)"
    )
    options = parser.parse_args()
    options.rounds = options.rounds or (3 if options.quick else 9)
    options.seconds = options.seconds or (1.5 if options.quick else 3.0)
    options.trials = options.trials or (5 if options.quick else 20)
    options.warmup = 0.3 if options.quick else 0.5
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-xds-") as workdir:
        result = asyncio.run(bench(options, Path(workdir)))
    result.update(
        concurrency=CONCURRENCY,
        rounds=options.rounds,
        seconds_per_run=options.seconds,
        cpus=os.cpu_count(),
        cpu_model=platform.processor() or platform.machine(),
        grpcio=grpc.__version__,
        python=platform.python_version(),
        wall_seconds=round(time.monotonic() - started, 1),
        quick=options.quick,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
