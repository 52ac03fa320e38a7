"""What the resilience chain and its telemetry cost per call, through the MeshChannel.

At concurrency 64 with a tiny unary call against one echo server process:

  bare     MeshChannel, no policy, no interceptors (breakers at their defaults are built in:
           they cannot be switched off, so the reference run ``raw`` shows their share)
  policy   MeshChannel with a retry policy (3 attempts), a default timeout and calls made
           under an inherited deadline: the resilience wiring alone, no telemetry
  chain    policy plus the client metrics observers a service gets (``grpc_client_*`` and
           the ``mesh_*`` resilience collector; mesh/observer.py); tracing off
  traced   the chain plus the client tracing observer (a span per call; a retried call
           gets one per attempt under it), every call sampled (spans go to the SDK's batch
           processor with an exporter that drops them)
  raw      a plain grpc.aio channel, for reference

Runs are interleaved (order rotated every round); each ratio is the median of per-round
ratios. Client CPU per call is reported because a saturated server hides client cost.

    .venv/bin/python bench/interceptors.py            # about 4 minutes
    .venv/bin/python bench/interceptors.py --quick    # under 60 s

The last line printed is one JSON object with ``ratio_chain`` (chain / bare) and
``ratio_chain_traced`` (traced / bare), null with a ``traced_unavailable`` reason when the
tracing observer cannot be built. Targets: >= 0.95 and >= 0.90. Telemetry is wired exactly
as :func:`mesh.telemetry.client_observers` wires it in a service, with no grpc.aio
interceptor (each would add a task per call).
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from mesh_overhead import METHOD, measure, start_servers  # noqa: E402

from mesh.channel import mesh_channel  # noqa: E402
from mesh.deadline import Deadline, deadline_scope  # noqa: E402
from mesh.registry.static import StaticDiscovery  # noqa: E402
from mesh.resilience import parse_policy  # noqa: E402

CHAIN_POLICY = {"defaults": {"timeout": 30.0, "retry": {"max_attempts": 3}}}


def metrics_observers() -> list[Any]:
    """What a service's channels get with tracing off: client metrics and the resilience collector."""
    from prometheus_client import CollectorRegistry

    from mesh.telemetry import client_observers

    return client_observers(CollectorRegistry(), None)


def traced_observers(queue: int = 2048) -> tuple[list[Any], Any]:
    """The same with a provider that samples every call and drops the spans.

    ``queue`` is the batch processor's queue (the SDK's default 2048): :func:`observer_cost`
    needs one that holds every span of its loop, or it measures spans dropped and logged.
    """
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON
    from prometheus_client import CollectorRegistry

    from mesh.telemetry import client_observers

    class Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=queue))
    return client_observers(CollectorRegistry(), provider), provider


OBSERVER_CALLS = 20000


def observer_cost(observers: list[Any], calls: int = OBSERVER_CALLS) -> float:
    """CPU us per call of the observers alone (one call, one attempt, no network).

    It does not depend on the server or the loop, but a tight loop flatters it: callgrind
    counts about the same instructions here as in the client under load, which spent about
    twice the CPU time on them (colder caches; docs/benchmarks.md).
    bench/call_instructions.py counts the whole client.
    """
    from mesh.observer import ChannelObservers

    class Channel:
        name = "bench"

    method = ChannelObservers(Channel(), observers).for_method(METHOD, "unary")
    assert method is not None
    ok = grpc.StatusCode.OK
    began = time.process_time()
    for _ in range(calls):
        call = method.call_start(None)
        assert call is not None
        call.attempt_start(1, "127.0.0.1:50051", None)
        call.attempt_end(ok)
        call.call_end(ok)
    return round((time.process_time() - began) / calls * 1e6, 1)


async def bench(rounds: int, seconds: float, warmup: float) -> dict[str, Any]:
    processes, ports = start_servers(1)
    provider = None
    try:
        target = f"127.0.0.1:{ports[0]}"
        names = ("bare", "policy", "chain", "traced")
        discovery = StaticDiscovery({name: [target] for name in names})
        policy = parse_policy(CHAIN_POLICY)
        metrics = metrics_observers()
        channels: dict[str, Any] = {
            "raw": grpc.aio.insecure_channel(target),
            "bare": mesh_channel("bare", discovery),
            "policy": mesh_channel("policy", discovery, policy=policy),
            "chain": mesh_channel("chain", discovery, policy=policy, observers=metrics),
        }
        traced_unavailable = None
        try:
            traced, provider = traced_observers()
            channels["traced"] = mesh_channel("traced", discovery, policy=policy, observers=traced)
        except ImportError as error:
            traced_unavailable = f"tracing observer unavailable: {error}"
        calls = {name: ch.unary_unary(METHOD, _registered_method=True) for name, ch in channels.items()}
        for name, call in calls.items():
            for _ in range(50):
                await call(b"x")
            print(f"warm: {name}", file=sys.stderr)
        rates: dict[str, list[float]] = {name: [] for name in calls}
        cpus: dict[str, list[float]] = {name: [] for name in calls}
        order = list(calls)
        for round_no in range(rounds):
            shift = round_no % len(order)
            for name in order[shift:] + order[:shift]:
                # chain variants run under an inherited deadline, as calls made by a handler do
                inherited = Deadline.after(3600) if name != "raw" and name != "bare" else None
                with deadline_scope(inherited):
                    rate, cpu = await measure(calls[name], seconds, warmup)
                rates[name].append(rate)
                cpus[name].append(cpu)
            print(
                f"round {round_no + 1}/{rounds}: "
                + "  ".join(f"{n}={rates[n][-1]:.0f}/s ({cpus[n][-1]:.0f}us cpu)" for n in order),
                file=sys.stderr,
            )

        def ratio(name: str) -> float | None:
            if name not in rates:
                return None
            return round(statistics.median(a / b for a, b in zip(rates[name], rates["bare"], strict=True)), 3)

        def cpu_ratio(name: str) -> float | None:
            if name not in cpus:
                return None
            return round(statistics.median(cpus["bare"]) / statistics.median(cpus[name]), 3)

        for ch in channels.values():
            await ch.close()
        traced_alone = None
        if traced_unavailable is None:
            observers, spare = traced_observers(queue=4 * OBSERVER_CALLS)
            traced_alone = observer_cost(observers)
            spare.shutdown()
        return {
            "ratio_policy": ratio("policy"),
            "ratio_chain": ratio("chain"),
            "ratio_chain_traced": ratio("traced"),
            "traced_unavailable": traced_unavailable,
            # Client CPU per call, bare / variant: steadier than throughput on a shared machine.
            "cpu_ratio_chain": cpu_ratio("chain"),
            "cpu_ratio_chain_traced": cpu_ratio("traced"),
            "ratio_bare_vs_raw": round(
                statistics.median(a / b for a, b in zip(rates["bare"], rates["raw"], strict=True)), 3
            ),
            "calls_per_second": {n: round(statistics.median(v)) for n, v in rates.items()},
            "client_cpu_us_per_call": {n: round(statistics.median(v), 1) for n, v in cpus.items()},
            "observer_cpu_us_per_call": {"chain": observer_cost(metrics_observers()), "traced": traced_alone},
            "concurrency": 64,
            "rounds": rounds,
            "seconds_per_run": seconds,
            "cpus": os.cpu_count(),
            "grpcio": grpc.__version__,
        }
    finally:
        if provider is not None:
            provider.shutdown()
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
    parser.add_argument("--quick", action="store_true", help="4 rounds of 1.5 s per variant (under 60 s)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    options = parser.parse_args()
    rounds = options.rounds or (4 if options.quick else 9)
    seconds = options.seconds or (1.5 if options.quick else 4.0)
    started = time.monotonic()
    result = asyncio.run(bench(rounds, seconds, warmup=0.3 if options.quick else 1.0))
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    result["quick"] = options.quick
    print(json.dumps(result))


if __name__ == "__main__":
    main()
