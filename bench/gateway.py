"""What the REST gateway costs: the same unary call as REST/JSON through it vs gRPC direct.

One real inventory service (SQLite, demo catalog) is the backend. The call is
``InventoryService.GetProduct`` (``GET /v1/products/TEA-SENCHA``), at concurrency 64:

  rest_gateway      HTTP/1.1 keep-alive clients -> ``python -m gateway`` -> inventory
  grpc_direct       gRPC through a MeshChannel (static discovery) -> inventory
  rest_grpc_gateway HTTP/1.1 clients -> grpc-gateway (Go, built from Debian's packages) -> inventory

Runs are interleaved (the order rotates every round) so drift of the machine hits every
variant alike; each ratio is the median of the per-round ratios. CPU per request of each
process is reported too (from /proc), because on this 2-core machine the gateway, the
backend and the load generator share the CPUs.

The Go peer is built once into a cache directory (GOPATH mode, GO111MODULE=off, Debian's Go
source tree on GOPATH; apt packages: golang-go golang-grpc-gateway
golang-github-grpc-ecosystem-grpc-gateway-dev golang-google-grpc-dev golang-goprotobuf-dev
golang-google-protobuf-dev protobuf-compiler). When it cannot be built the run says why and
reports ``ratio_vs_grpc_gateway: null``.

    .venv/bin/python bench/gateway.py            # ~2 minutes
    .venv/bin/python bench/gateway.py --quick    # under 60 s (peer already built)

The last line printed is one JSON object with ``ratio_vs_direct`` and ``ratio_vs_grpc_gateway``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402

from bench.otlp_sink import OtlpSink  # noqa: E402
from mesh.health import wait_serving  # noqa: E402
from mesh.identity import generate_keypair  # noqa: E402
from services.launcher import wait_ready  # noqa: E402
from shop.inventory.v1 import inventory_pb2  # noqa: E402

CONCURRENCY = 64
SKU = "TEA-SENCHA"
PATH = f"/v1/products/{SKU}"
GRPC_METHOD = "/shop.inventory.v1.InventoryService/GetProduct"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tsunagu-bench" / "grpc-gateway"

GO_MAIN = """package main

import (
	"context"
	"flag"
	"log"
	"net/http"

	"github.com/grpc-ecosystem/grpc-gateway/runtime"
	"google.golang.org/grpc"

	"gw/pb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:8090", "")
	backend := flag.String("backend", "127.0.0.1:50054", "")
	flag.Parse()
	mux := runtime.NewServeMux()
	opts := []grpc.DialOption{grpc.WithInsecure()}
	if err := pb.RegisterInventoryServiceHandlerFromEndpoint(context.Background(), mux, *backend, opts); err != nil {
		log.Fatal(err)
	}
	log.Fatal(http.ListenAndServe(*listen, mux))
}
"""

# The cheap backend: GetProduct answered from memory, so the gateway in front is the bottleneck.
# The same product the demo catalog serves for TEA-SENCHA, so both variants carry one payload.
GO_BACKEND = """package main

import (
	"context"
	"flag"
	"log"
	"net"

	"github.com/golang/protobuf/ptypes/timestamp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"gw/money"
	"gw/pb"
)

type catalog struct {
	pb.UnimplementedInventoryServiceServer
}

func (*catalog) GetProduct(ctx context.Context, request *pb.GetProductRequest) (*pb.GetProductResponse, error) {
	return &pb.GetProductResponse{Product: &pb.Product{
		Sku:        request.Sku,
		Name:       "Sencha green tea, 100 g",
		Price:      &money.Money{CurrencyCode: "EUR", Units: 12, Nanos: 500000000},
		Stock:      100,
		UpdateTime: &timestamp.Timestamp{Seconds: 1767225600},
	}}, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:50054", "")
	flag.Parse()
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	server := grpc.NewServer()
	pb.RegisterInventoryServiceServer(server, &catalog{})
	healthpb.RegisterHealthServer(server, health.NewServer()) // SERVING: what the bench waits for
	log.Fatal(server.Serve(listener))
}
"""


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the Go peer ---------------------------------------------------------------------------


def build_grpc_gateway() -> tuple[Path | None, str]:
    """The peer binary (built once, cached, with the cheap backend beside it: ``cheap_backend()``),
    or None and the reason it could not be built."""
    binary = CACHE / "grpc-gateway-peer"
    proto = ROOT / "protos/shop/inventory/v1/inventory.proto"
    stamp = CACHE / "source.stamp"
    source_key = proto.read_text() + GO_MAIN + GO_BACKEND
    if binary.exists() and cheap_backend().exists() and stamp.exists() and stamp.read_text() == source_key:
        return binary, "cached"
    for tool in ("go", "protoc", "protoc-gen-go", "protoc-gen-grpc-gateway"):
        if shutil.which(tool) is None:
            return None, f"{tool} not found (apt-get install the packages listed in bench/gateway.py)"
    gopath_src = Path("/usr/share/gocode/src")
    if not (gopath_src / "github.com/grpc-ecosystem/grpc-gateway/runtime").exists():
        return (
            None,
            "Debian's grpc-gateway sources are missing (golang-github-grpc-ecosystem-grpc-gateway-dev)",
        )
    work = CACHE / "gopath"
    shutil.rmtree(work, ignore_errors=True)
    protos = work / "protos"
    (protos / "shop/inventory/v1").mkdir(parents=True)
    (protos / "google/type").mkdir(parents=True)
    # Debian's golang/protobuf is APIv1 (1.3.5): generate every message with it (own go_package
    # for money.proto, the APIv1 Timestamp type) so no APIv2 type ends up in the message tree.
    (protos / "shop/inventory/v1/inventory.proto").write_text(
        proto.read_text().replace(
            "package shop.inventory.v1;", 'package shop.inventory.v1;\noption go_package = "gw/pb;pb";'
        )
    )
    money = (ROOT / "third_party/googleapis/google/type/money.proto").read_text()
    lines = [
        'option go_package = "gw/money;money";' if line.startswith("option go_package") else line
        for line in money.splitlines()
    ]
    (protos / "google/type/money.proto").write_text("\n".join(lines) + "\n")
    src = work / "src"
    (src / "gw").mkdir(parents=True)
    (src / "gw/main.go").write_text(GO_MAIN)
    (src / "gw/backend").mkdir()
    (src / "gw/backend/main.go").write_text(GO_BACKEND)
    mapping = "Mgoogle/protobuf/timestamp.proto=github.com/golang/protobuf/ptypes/timestamp"
    includes = ["-I", str(protos), "-I", str(ROOT / "third_party/googleapis"), "-I", "/usr/include"]
    steps = [
        [
            "protoc",
            *includes,
            f"--go_out=plugins=grpc,{mapping}:{src}",
            str(protos / "google/type/money.proto"),
        ],
        [
            "protoc",
            *includes,
            f"--go_out=plugins=grpc,{mapping}:{src}",
            str(protos / "shop/inventory/v1/inventory.proto"),
        ],
        [
            "protoc",
            *includes,
            f"--grpc-gateway_out=logtostderr=true,{mapping}:{src}",
            str(protos / "shop/inventory/v1/inventory.proto"),
        ],
        ["go", "build", "-o", str(binary), "gw"],
        ["go", "build", "-o", str(cheap_backend()), "gw/backend"],
    ]
    env = dict(
        os.environ, GOPATH=f"{work}:/usr/share/gocode", GO111MODULE="off", GOCACHE=str(CACHE / "gocache")
    )
    env.pop("GOFLAGS", None)
    for step in steps:
        done = subprocess.run(step, env=env, capture_output=True, text=True, cwd=work, check=False)
        if done.returncode != 0:
            return None, f"{' '.join(step[:2])} failed: {(done.stderr or done.stdout).strip()[:500]}"
    stamp.write_text(source_key)
    return binary, "built"


def cheap_backend() -> Path:
    """Where the Go GetProduct-from-memory backend is built (beside the peer)."""
    return CACHE / "cheap-inventory"


# -- processes -----------------------------------------------------------------------------


class Processes:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - kept for the process's life
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.started.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.started):
            if process.poll() is None:
                process.terminate()
        for process in self.started:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- load ----------------------------------------------------------------------------------


class HttpLoad:
    """Keep-alive HTTP/1.1 clients sending one pre-encoded GET, reading by Content-Length."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.request = f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n".encode()
        self.errors = 0

    async def connect(self) -> Callable[[], Awaitable[None]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        request = self.request

        async def call() -> None:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                self.errors += 1
            lower = head.lower()
            start = lower.find(b"content-length:")
            length = int(lower[start + 15 : lower.find(b"\r\n", start)])
            await reader.readexactly(length)

        return call


async def grpc_caller(target: str) -> tuple[Callable[[], Awaitable[None]], Any]:
    request = inventory_pb2.GetProductRequest(sku=SKU)
    try:
        from mesh.channel import mesh_channel
        from mesh.registry.static import StaticDiscovery

        channel: Any = mesh_channel("inventory", StaticDiscovery({"inventory": [target]}))
    except ImportError:  # the mesh channel is optional for this benchmark
        channel = grpc.aio.insecure_channel(target)
    method = channel.unary_unary(
        GRPC_METHOD,
        request_serializer=inventory_pb2.GetProductRequest.SerializeToString,
        response_deserializer=inventory_pb2.GetProductResponse.FromString,
        _registered_method=True,
    )

    async def call() -> None:
        await method(request, timeout=10.0)

    return call, channel


async def measure(
    calls: list[Callable[[], Awaitable[None]]], seconds: float, warmup: float, pids: dict[str, int]
) -> dict[str, float]:
    count = 0
    running = True

    async def worker(call: Callable[[], Awaitable[None]]) -> None:
        nonlocal count
        while running:
            await call()
            count += 1

    workers = [asyncio.ensure_future(worker(call)) for call in calls]
    await asyncio.sleep(warmup)
    start_count, start = count, time.perf_counter()
    start_cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    start_client = time.process_time()
    await asyncio.sleep(seconds)
    done, elapsed = count - start_count, time.perf_counter() - start
    cpu = {name: cpu_seconds(pid) - start_cpu[name] for name, pid in pids.items()}
    client = time.process_time() - start_client
    running = False
    await asyncio.gather(*workers)
    result = {"rps": done / elapsed, "client_cpu_us": client / max(done, 1) * 1e6}
    for name, seconds_used in cpu.items():
        result[f"{name}_cpu_us"] = seconds_used / max(done, 1) * 1e6
    return result


def start_gateway(
    processes: Processes, base: dict[str, str], upstream: str, name: str
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    gateway = processes.start(
        [sys.executable, "-m", "gateway"],
        dict(
            base,
            GATEWAY_PORT=str(port),
            GATEWAY_UPSTREAM_INVENTORY=upstream,
            GATEWAY_RATE_LIMIT_PER_SECOND="0",
        ),
        name,
    )
    wait_ready(f"http://127.0.0.1:{port}/healthz", gateway, 20.0)
    return gateway, port


def go_env() -> dict[str, str]:
    """The environment of a Go process here: both cores unless GOMAXPROCS says otherwise."""
    return dict(os.environ, GOMAXPROCS=os.environ.get("GOMAXPROCS", "2"))


def start_grpc_gateway(
    processes: Processes, peer: Path, backend: str, name: str
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    go = processes.start(
        [str(peer), "-listen", f"127.0.0.1:{port}", "-backend", backend],
        go_env(),
        name,
    )
    wait_ready(f"http://127.0.0.1:{port}{PATH}", go, 20.0)
    return go, port


async def bench(rounds: int, seconds: float, warmup: float, with_peer: bool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    processes = Processes(workdir)
    peer, peer_note = build_grpc_gateway() if with_peer else (None, "skipped (--no-peer)")
    print(f"grpc-gateway peer: {peer_note}", file=sys.stderr)
    sink = await OtlpSink(caller="inventory").start()  # recording off: exports are dropped
    try:
        _, public = generate_keypair(workdir / "keys")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "GATEWAY_", "OTEL_"))}
        base.update(PYTHONPATH=str(ROOT), MESH_JWT_PUBLIC_KEY_FILE=str(public), MESH_LOG_LEVEL="WARNING")
        base.update(MESH_INSECURE="1")  # no Consul agent here: plaintext inside the mesh, as before
        inventory_port = free_port()
        # The backend as it runs in the shop: every call traced (OTLP to the sink), counted, and
        # logged at INFO (one JSON line per call).
        inventory = processes.start(
            [sys.executable, "-m", "services.inventory"],
            dict(
                base,
                MESH_PORT=str(inventory_port),
                MESH_DATA_DIR=str(workdir / "data"),
                MESH_LOG_LEVEL="INFO",
                INVENTORY_SEED_DEMO="1",
                OTEL_TRACES_EXPORTER="otlp",
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink.port}",
            ),
            "inventory",
        )
        wait_serving(f"127.0.0.1:{inventory_port}", 30, inventory)
        gateway, gateway_port = start_gateway(processes, base, f"127.0.0.1:{inventory_port}", "gateway")
        variants: dict[str, tuple[list[Callable[[], Awaitable[None]]], dict[str, int]]] = {}
        loads: list[HttpLoad] = []

        async def http_variant(name: str, port: int, pids: dict[str, int]) -> None:
            loads.append(HttpLoad(port))
            variants[name] = ([await loads[-1].connect() for _ in range(CONCURRENCY)], pids)

        await http_variant("rest_gateway", gateway_port, {"gateway": gateway.pid, "backend": inventory.pid})
        grpc_call, channel = await grpc_caller(f"127.0.0.1:{inventory_port}")
        variants["grpc_direct"] = ([grpc_call] * CONCURRENCY, {"backend": inventory.pid})
        if peer is not None:
            go, go_port = start_grpc_gateway(processes, peer, f"127.0.0.1:{inventory_port}", "grpc-gateway")
            await http_variant(
                "rest_grpc_gateway", go_port, {"grpc_gateway": go.pid, "backend": inventory.pid}
            )
            # The same two gateways in front of a backend that answers from memory (Go), so
            # the gateway, not the backend, sets the pace.
            cheap_port = free_port()
            cheap = processes.start(
                [str(cheap_backend()), "-listen", f"127.0.0.1:{cheap_port}"], go_env(), "cheap-inventory"
            )
            wait_serving(f"127.0.0.1:{cheap_port}", 20, cheap)
            cheap_gateway, cheap_gateway_port = start_gateway(
                processes, base, f"127.0.0.1:{cheap_port}", "gateway-cheap"
            )
            await http_variant(
                "rest_gateway_cheap_backend",
                cheap_gateway_port,
                {"gateway": cheap_gateway.pid, "backend": cheap.pid},
            )
            cheap_go, cheap_go_port = start_grpc_gateway(
                processes, peer, f"127.0.0.1:{cheap_port}", "grpc-gateway-cheap"
            )
            await http_variant(
                "rest_grpc_gateway_cheap_backend",
                cheap_go_port,
                {"grpc_gateway": cheap_go.pid, "backend": cheap.pid},
            )
        # One request on every connection first: our gateway closes a connection that starts
        # no request within its header timeout (10 s), and the rounds reach the last variant
        # later than that.
        for calls, _ in variants.values():
            await asyncio.gather(*(call() for call in calls))
        for name, (calls, _) in variants.items():  # warm every path
            for call in calls[:8]:
                for _ in range(20):
                    await call()
            print(f"warm: {name}", file=sys.stderr)

        results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        order = list(variants)
        for round_no in range(rounds):
            shift = round_no % len(order)
            for name in order[shift:] + order[:shift]:
                calls, watched = variants[name]
                results[name].append(await measure(calls, seconds, warmup, watched))
            print(
                f"round {round_no + 1}/{rounds}: "
                + "  ".join(f"{n}={results[n][-1]['rps']:.0f}/s" for n in order),
                file=sys.stderr,
            )
        await channel.close()
        return summarize(results, sum(load.errors for load in loads), peer_note, rounds, seconds)
    finally:
        # In a thread: the loop must stay free to take the inventory's last span export while
        # it stops, or that export waits out its flush bound and is cancelled by sink.stop().
        await asyncio.to_thread(processes.stop)
        await sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def summarize(
    results: dict[str, list[dict[str, float]]], errors: int, peer_note: str, rounds: int, seconds: float
) -> dict[str, Any]:
    """The JSON line: ratios (median of per-round ratios), then CPU per request (median)."""

    def rps(name: str) -> list[float]:
        return [r["rps"] for r in results[name]]

    def ratios(ours: str, theirs: str) -> list[float]:
        return [a / b for a, b in zip(rps(ours), rps(theirs), strict=True)]

    def cpu(variant: str, process: str) -> float | None:
        runs = results.get(variant)
        return round(statistics.median(r[f"{process}_cpu_us"] for r in runs), 1) if runs else None

    vs_direct = ratios("rest_gateway", "grpc_direct")
    summary: dict[str, Any] = {
        "ratio_vs_direct": round(statistics.median(vs_direct), 3),
        "ratio_vs_grpc_gateway": None,
        "backend_cpu_us_per_request": cpu("rest_gateway", "backend"),
    }
    if "rest_grpc_gateway" in results:
        vs_peer = ratios("rest_gateway", "rest_grpc_gateway")
        cheap = ratios("rest_gateway_cheap_backend", "rest_grpc_gateway_cheap_backend")
        ours = cpu("rest_gateway_cheap_backend", "gateway")
        theirs = cpu("rest_grpc_gateway_cheap_backend", "grpc_gateway")
        summary.update(
            {
                "ratio_vs_grpc_gateway": round(statistics.median(vs_peer), 3),
                "ratio_vs_grpc_gateway_cheap_backend": round(statistics.median(cheap), 3),
                "gateway_cpu_us_per_request": ours,
                "grpc_gateway_cpu_us_per_request": theirs,
                "gateway_cpu_vs_grpc_gateway": round(ours / theirs, 3) if ours and theirs else None,
                "ratios_per_round_vs_grpc_gateway": [round(x, 3) for x in vs_peer],
                "ratios_per_round_vs_grpc_gateway_cheap_backend": [round(x, 3) for x in cheap],
            }
        )
    else:
        summary["grpc_gateway_reason"] = peer_note
    summary.update(
        {
            "ratios_per_round_vs_direct": [round(x, 3) for x in vs_direct],
            "requests_per_second": {n: round(statistics.median(rps(n))) for n in results},
            "cpu_us_per_request": {
                name: {
                    key.removesuffix("_cpu_us"): round(statistics.median(r[key] for r in runs), 1)
                    for key in runs[0]
                    if key.endswith("_cpu_us")
                }
                for name, runs in results.items()
            },
            "http_errors": errors,
            "call": f"GET {PATH} (InventoryService.GetProduct)",
            "backend_telemetry": "traced (OTLP, every call), metrics, RPC log at INFO",
            "concurrency": CONCURRENCY,
            "rounds": rounds,
            "seconds_per_run": seconds,
            "cpus": os.cpu_count(),
            "grpc_gateway_peer": peer_note,
        }
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 s per variant (under 60 s)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--no-peer", action="store_true", help="skip the grpc-gateway (Go) peer")
    options = parser.parse_args()
    rounds = options.rounds or (3 if options.quick else 7)
    seconds = options.seconds or (2.0 if options.quick else 4.0)
    started = time.monotonic()
    try:
        import uvloop

        runner: Callable[[Any], Any] = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(bench(rounds, seconds, 0.3 if options.quick else 0.5, not options.no_peer))
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    result["quick"] = options.quick
    print(json.dumps(result))


if __name__ == "__main__":
    main()
