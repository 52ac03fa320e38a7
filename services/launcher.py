"""``make run``: start the whole shop on this machine and stop it cleanly on Ctrl-C.

It prepares what a fresh clone lacks (a JWT key pair under .run/, the admin account, the
demo catalog), starts every service as its own process, waits until each reports SERVING,
prints the commands to try, and on Ctrl-C or SIGTERM stops the processes it started, by PID.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mesh.health import wait_serving
from mesh.identity import generate_keypair
from mesh.registry.dev_agent import ConsulDevAgent, consul_answers, find_consul, free_port
from services.common.messaging.topology import broker_address
from services.common.settings import DEFAULT_PORTS, messaging_settings_from_env

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
LOG_DIR = RUN_DIR / "logs"
START_ORDER = ("user", "inventory", "payment", "shipping", "order")
INSTANCES = {"inventory": 2, "payment": 2}  # several instances show balancing and failover
DEFAULT_CONSUL = "127.0.0.1:8500"
SERVICE_CALLERS = ("order",)
PR_SET_PDEATHSIG = 1
GATEWAY_PORT = 8080


@dataclass
class Child:
    name: str
    port: int
    process: subprocess.Popen[bytes]


def try_lines(ports: dict[str, int], host: str = "localhost") -> list[str]:
    """The grpcurl commands printed at start and shown in the README, for these ports."""
    user, inventory, order = (f"{host}:{ports[n]}" for n in ("user", "inventory", "order"))
    return [
        f"grpcurl -plaintext {inventory} list",
        f"grpcurl -plaintext {inventory} describe shop.inventory.v1.InventoryService",
        f"grpcurl -plaintext -d '{{\"page_size\": 3}}' {inventory} shop.inventory.v1.InventoryService/ListProducts",
        f'grpcurl -plaintext -d \'{{"email": "ada@example.com", "password": "correct-horse-9", '
        f'"display_name": "Ada", "request_id": "signup-ada"}}\' {user} shop.user.v1.UserService/CreateUser',
        f'TOKEN=$(grpcurl -plaintext -d \'{{"email": "ada@example.com", "password": "correct-horse-9"}}\' '
        f"{user} shop.user.v1.UserService/Login | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        f'grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d \'{{"items": [{{"sku": "TEA-SENCHA", '
        f'"quantity": 2}}], "shipping_address": {{"recipient": "Ada", "line1": "1-1 Chiyoda", '
        f'"city": "Tokyo", "postal_code": "100-0001", "country_code": "JP"}}, "request_id": "order-1"}}\' '
        f"{order} shop.order.v1.OrderService/CreateOrder",
        f'grpcurl -plaintext -H "authorization: Bearer $TOKEN" {order} shop.order.v1.OrderService/ListOrders',
    ]


def prepare(environ: dict[str, str]) -> dict[str, str]:
    """The environment every child gets: keys and data under .run/ unless already configured."""
    env = dict(environ)
    keys = RUN_DIR / "keys"
    for stem in ("jwt", "service"):
        if not (keys / f"{stem}-private.pem").exists():
            generate_keypair(keys, stem)
    env.setdefault("MESH_JWT_PRIVATE_KEY_FILE", str(keys / "jwt-private.pem"))
    env.setdefault("MESH_JWT_PUBLIC_KEY_FILE", str(keys / "jwt-public.pem"))
    env.setdefault("MESH_SERVICE_PRIVATE_KEY_FILE", str(keys / "service-private.pem"))
    env.setdefault("MESH_SERVICE_PUBLIC_KEY_FILE", str(keys / "service-public.pem"))
    env.setdefault("MESH_DATA_DIR", str(RUN_DIR / "data"))
    env.setdefault("INVENTORY_SEED_DEMO", "1")
    env["PYTHONPATH"] = str(ROOT)
    return env


def broker_line(env: dict[str, str], timeout: float = 1.0) -> str:
    """One line saying whether RabbitMQ answers at the configured URL (never its credentials).

    The shop starts either way: without a broker, order events wait in the order service's
    outbox and leave once one answers.
    """
    messaging = messaging_settings_from_env(env)
    if not messaging.enabled:
        return "  rabbitmq   off (SHOP_AMQP_URL=none): order events stay in the outbox"
    address = broker_address(messaging.amqp_url)
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError:
        return (
            f"  rabbitmq   {address}  NOT ANSWERING: order events wait in the outbox until it does "
            "(tools/ensure-rabbitmq.sh starts one)"
        )
    return f"  {'rabbitmq':<10} {address}  answers (exchange {messaging.exchange})"


def _terminate_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM should the launcher die (even by SIGKILL).

    The children run in their own session, so without this a killed launcher would leave
    the whole shop running with nobody to stop it.
    """
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(module: str, env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    """Start ``python -m module`` in its own session, tied to the launcher's life.

    Its JSON logs go to ``.run/logs/<log_name>.log`` so the terminal keeps only what a person
    needs to try the shop.
    """
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / f"{log_name}.log", "ab") as log:
        # Own session: a terminal's Ctrl-C reaches only the launcher, which then sends each
        # child exactly one SIGTERM (a second signal would make a child skip its drain).
        return subprocess.Popen(
            [sys.executable, "-m", module],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_terminate_with_parent,
        )


def start_consul(env: dict[str, str], children: list[Child]) -> str:
    """Use the Consul agent at CONSUL_HTTP_ADDR, or start a dev agent there and own it."""
    address = env.get("CONSUL_HTTP_ADDR", DEFAULT_CONSUL)
    if consul_answers(address):
        print(f"  {'consul':<10} {address}  (already running)", flush=True)
        return address
    port = int(address.rsplit(":", 1)[1]) if ":" in address else 8500
    RUN_DIR.mkdir(exist_ok=True)
    agent = ConsulDevAgent(find_consul(ROOT), RUN_DIR / "consul.log", ports={"http": port})
    agent.start(new_session=True)
    assert agent.process is not None
    children.append(Child("consul", port, agent.process))
    print(f"  {'consul':<10} 127.0.0.1:{port}  pid {agent.process.pid}  READY", flush=True)
    return f"127.0.0.1:{port}"


def start_services(env: dict[str, str], children: list[Child]) -> None:
    """Start every service instance, wait until each is SERVING and passing in Consul."""
    first = len(children)
    for name in START_ORDER:
        for instance in range(INSTANCES.get(name, 1)):
            default = int(env.get(f"{name.upper()}_PORT", DEFAULT_PORTS[name]))
            port = default if instance == 0 else free_port()
            child_env = dict(env, MESH_PORT=str(port))
            if name != "user":
                child_env.pop("MESH_JWT_PRIVATE_KEY_FILE", None)  # only the issuer signs user tokens
            if name not in SERVICE_CALLERS:
                child_env.pop("MESH_SERVICE_PRIVATE_KEY_FILE", None)  # only callers sign as a service
            children.append(Child(name, port, spawn(f"services.{name}", child_env, f"{name}-{port}")))
    for child in children[first:]:
        wait_serving(f"127.0.0.1:{child.port}", timeout=120, process=child.process)
        print(f"  {child.name:<10} 127.0.0.1:{child.port}  pid {child.process.pid}  SERVING", flush=True)
    wait_passing(env["CONSUL_HTTP_ADDR"], children[first:], timeout=60)


def wait_passing(consul: str, children: list[Child], timeout: float) -> None:
    """Poll Consul until every started instance's gRPC health check is passing."""
    url = consul if "//" in consul else f"http://{consul}"
    wanted = {(c.name, c.port) for c in children}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        passing = set()
        for name in {c.name for c in children}:
            with urllib.request.urlopen(f"{url}/v1/health/service/{name}?passing=1", timeout=2) as reply:
                passing |= {(name, row["Service"]["Port"]) for row in json.loads(reply.read())}
        if wanted <= passing:
            print(f"  every instance passing in Consul ({len(wanted)})", flush=True)
            return
        time.sleep(0.2)  # poll interval
    raise TimeoutError(f"not passing in Consul after {timeout}s: {sorted(wanted - passing)}")


def start_gateway(env: dict[str, str], services: dict[str, int], children: list[Child]) -> int:
    """Start the REST gateway in front of the services; wait until /readyz answers 200."""
    port = int(env.get("GATEWAY_PORT", GATEWAY_PORT))
    gateway_env = {k: v for k, v in env.items() if not k.endswith("PRIVATE_KEY_FILE")}
    gateway_env.update({f"GATEWAY_UPSTREAM_{n.upper()}": f"127.0.0.1:{p}" for n, p in services.items()})
    gateway_env["GATEWAY_PORT"] = str(port)
    process = spawn("gateway", gateway_env, f"gateway-{port}")
    children.append(Child("gateway", port, process))
    wait_ready(f"http://127.0.0.1:{port}/readyz", process, timeout=120)
    print(f"  {'gateway':<10} 127.0.0.1:{port}  pid {process.pid}  READY", flush=True)
    return port


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll an HTTP readiness endpoint until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)  # poll interval
    raise TimeoutError(f"{url} not ready after {timeout}s")


def curl_lines(port: int, host: str = "localhost") -> list[str]:
    """The REST walk-through printed at start and shown in the README, for this port."""
    address = json.dumps(
        {
            "recipient": "Ada",
            "line1": "1-1 Chiyoda",
            "city": "Tokyo",
            "postalCode": "100-0001",
            "countryCode": "JP",
        }
    )
    order = json.dumps(
        {
            "items": [{"sku": "TEA-MATCHA", "quantity": 1}],
            "shippingAddress": json.loads(address),
            "requestId": "order-2",
        }
    )
    return [
        f"G=http://{host}:{port}",
        "curl -s -X POST $G/v1/users -H 'Content-Type: application/json' "
        '-d \'{"email": "grace@example.com", "password": "correct-horse-9", '
        '"displayName": "Grace", "requestId": "signup-grace"}\'',
        "TOKEN=$(curl -s -X POST $G/v1/users:login -H 'Content-Type: application/json' "
        '-d \'{"email": "grace@example.com", "password": "correct-horse-9"}\' '
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"accessToken\"])')",
        'curl -s "$G/v1/products?pageSize=3"',
        'ORDER=$(curl -s -X POST $G/v1/orders -H "Authorization: Bearer $TOKEN" '
        f"-H 'Content-Type: application/json' -d '{order}' "
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"orderId\"])')",
        'curl -s $G/v1/orders/$ORDER -H "Authorization: Bearer $TOKEN"',
        'curl -s $G/v1/orders -H "Authorization: Bearer $TOKEN"',
        'curl -sN $G/v1/orders/$ORDER:watch -H "Authorization: Bearer $TOKEN"',
        # Issued by payment's billing consumer from the order.confirmed event (a moment later).
        'curl -s $G/v1/invoices -H "Authorization: Bearer $TOKEN"',
        'curl -s $G/v1/notifications -H "Authorization: Bearer $TOKEN"',
    ]


def stop(children: list[Child], grace: float = 15.0) -> None:
    """SIGTERM each child still running (by PID), wait for the drain, SIGKILL stragglers."""
    for child in reversed(children):
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM to the launcher stops the shop the same way Ctrl-C does."""
    raise KeyboardInterrupt


def main() -> int:
    env = prepare(dict(os.environ))
    seeded = subprocess.run(
        [sys.executable, "-m", "services.user.seed_admin"], cwd=ROOT, env=env, check=False
    )
    if seeded.returncode != 0:
        print("could not seed the admin account", file=sys.stderr)
        return 1
    print("starting the shop:", flush=True)
    children: list[Child] = []
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(broker_line(env), flush=True)  # SHOP_AMQP_URL / SHOP_EVENTS_NAMESPACE reach every child
        env["CONSUL_HTTP_ADDR"] = start_consul(env, children)
        start_services(env, children)
        ports = {c.name: c.port for c in reversed(children)}  # the first instance of each
        gateway_port = start_gateway(env, ports, children)
        lines = ["source .venv/bin/activate", *try_lines(ports)]
        print("\ntry gRPC (in another terminal):\n" + "\n".join(f"  {line}" for line in lines), flush=True)
        rest = curl_lines(gateway_port)
        print("\ntry REST through the gateway:\n" + "\n".join(f"  {line}" for line in rest), flush=True)
        print("\nwhat Consul knows: .venv/bin/mesh status", flush=True)
        print(f"logs (one JSON line per RPC): {LOG_DIR.relative_to(ROOT)}/", flush=True)
        print("\nCtrl-C stops everything.", flush=True)
        while all(c.process.poll() is None for c in children):
            time.sleep(0.5)
        failed = [c.name for c in children if c.process.poll() is not None]
        print(f"stopped unexpectedly: {', '.join(failed)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    finally:
        stop(children)


if __name__ == "__main__":
    sys.exit(main())
