"""A frozen upstream instance costs a gateway read one short attempt, not its deadline.

Two real inventory processes are the catalog's ``inventory`` entries in a Consul dev agent,
behind a real gateway process running with its default settings (10 s default deadline, no
policy file). One inventory is frozen with SIGSTOP; concurrent ``GET /v1/products/<sku>``
reads must all answer 200 while it stays frozen: the gateway's built-in read policy gives
each attempt 1 s and retries a timed-out read on the other instance. The frozen process is
resumed only after every read has returned (and in a ``finally``), so the reads provably
finished while it was frozen.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.settings import DEFAULT_UPSTREAMS
from mesh.registry.dev_agent import ConsulDevAgent
from tests.integration.gateway.conftest import http_request, start_gateway
from tests.support.freeze import freeze
from tests.support.processes import ServiceProcess, free_port, service_env
from tests.support.tokens import KeyPair

READS = 16  # concurrent reads while one instance is frozen: some are sent to it
SKU = "TEA-SENCHA"  # in the demo catalogue both instances seed


def register(agent: ConsulDevAgent, name: str, port: int) -> None:
    """A catalog entry without checks (so passing) for ``name`` at 127.0.0.1:port."""
    body = {"ID": f"{name}-{port}", "Name": name, "Address": "127.0.0.1", "Port": port}
    request = urllib.request.Request(
        agent.http_addr + "/v1/agent/service/register", method="PUT", data=json.dumps(body).encode()
    )
    with urllib.request.urlopen(request, timeout=2):
        pass


def inventory(directory: Path, keys: KeyPair, index: int) -> ServiceProcess:
    port = free_port()
    env = service_env(
        {"MESH_PORT": str(port), "MESH_DATA_DIR": str(directory / f"data-{index}"), **keys.env("inventory")},
        INVENTORY_SEED_DEMO="1",
    )
    return ServiceProcess("inventory", port, env, directory / f"inventory-{index}.log")


def test_reads_answer_while_one_of_two_inventory_instances_is_frozen(
    consul_agent: ConsulDevAgent, jwt_keys: KeyPair, tmp_path: Path
) -> None:
    instances = [inventory(tmp_path, jwt_keys, index) for index in range(2)]
    gateway = None
    frozen: ServiceProcess | None = None
    try:
        for instance in instances:
            instance.start()
            register(consul_agent, "inventory", instance.port)
        for name in DEFAULT_UPSTREAMS:  # the other upstreams only need to be known for /readyz
            if name != "inventory":
                register(consul_agent, name, free_port())
        env = {
            "CONSUL_HTTP_ADDR": consul_agent.http_addr,
            "GATEWAY_RATE_LIMIT_PER_SECOND": "0",
            **jwt_keys.env("gateway"),
        }
        gateway = start_gateway(tmp_path, env)
        path = f"/v1/products/{SKU}"
        for _ in range(8):  # both instances serving: the gateway holds a connection to each
            assert http_request(gateway.port, "GET", path)[0] == 200

        frozen = instances[0]
        assert frozen.process is not None
        freeze(frozen.process.pid)
        with ThreadPoolExecutor(READS) as pool:
            answers = list(pool.map(lambda _: http_request(gateway.port, "GET", path), range(READS)))
        # Every read has returned and the instance is still frozen (resumed only below).
        assert frozen.process is not None and frozen.process.poll() is None
        statuses = [status for status, _, _ in answers]
        assert statuses == [200] * READS, [body[:200] for _, _, body in answers]
        assert all(json.loads(body)["sku"] == SKU for _, _, body in answers)
    finally:
        if frozen is not None:
            frozen.signal(signal.SIGCONT)
        if gateway is not None:
            gateway.stop()
        for instance in instances:
            instance.terminate()
