"""``make cluster``: the shop across hosts on this machine (network namespaces), Ctrl-C to stop.

It reads a multi-host topology file (``MESH_TOPOLOGY``, default deploy/cluster.toml), starts it
with services/cluster/shop.py, prints what to try, then supervises like ``make run`` does: a
service instance that dies is restarted with backoff on its own host (services/supervisor.py),
and ``mesh scale`` / ``mesh restart`` / ``mesh instances`` work through the same control
endpoint (a new instance goes to the app host running fewest of that service). Consul agents
are not restarted: a host's agent that dies stays down until someone starts it, as on a host
whose init system gave up (the printed lines say how); its instances turn critical meanwhile.

Ctrl-C (or SIGTERM) stops every process it started, by PID, then removes every namespace, link
and forward it made. A run that was killed instead leaves namespaces whose owner is gone: the
next run (and the cluster tests) sweep those first. Needs root, for ``ip netns``.

Settings from the environment: ``GATEWAY_PORT`` (8080) and the port of ``CONSUL_HTTP_ADDR``
(8500) on the machine's loopback; ``CLUSTER_POSTGRES_DSN`` (postgresql://postgres@127.0.0.1:5432/postgres:
it creates the shop's databases ``CLUSTER_DATABASE_PREFIX``\\_<service>, tsunagu_cluster_* by
default, kept between runs); ``SHOP_AMQP_URL``; ``MESH_CLUSTER_DIR`` (.run/cluster);
``MESH_CLUSTER_STATE`` (where the hosts' namespaces and agents are written as JSON, default
<cluster dir>/state.json); ``CLUSTER_FORWARD_PORTS`` (machine loopback ports every host reaches
at the same port, comma separated: an OTLP collector for OTEL_EXPORTER_OTLP_ENDPOINT);
``MESH_CONTROL_FILE``; ``MESH_INSECURE``.
"""

from __future__ import annotations

import os
import signal
import sys
from functools import partial
from pathlib import Path

from mesh.config import env_int, env_list, env_str
from mesh.connect.settings import INSECURE_WARNING, security_settings_from_env
from mesh.control import control_file_path
from mesh.errors import ConfigError
from mesh.registry.acl import ConsulAclError
from mesh.registry.dev_agent import find_consul
from services.cluster.network import NetworkError, sweep
from services.cluster.shop import ClusterSettings, ClusterShop, Placed
from services.common.settings import DEFAULT_AMQP_URL
from services.control import ControlServer
from services.fleet import Fleet
from services.launcher import ROOT, LaunchError, curl_lines, interrupt, prepare, shown
from services.supervisor import Supervisor
from services.topology import SERVICES, TopologyError, load_topology

DEFAULT_CLUSTER_TOPOLOGY = ROOT / "deploy" / "cluster.toml"


def settings_from_env(
    environ: dict[str, str], *, mtls: bool, child_env: dict[str, str], consul_binary: str
) -> ClusterSettings:
    """``make cluster``'s settings; ``child_env`` is what every process gets (launcher.prepare)."""
    workdir = ROOT / env_str(environ, "MESH_CLUSTER_DIR", ".run/cluster")
    consul = env_str(environ, "CONSUL_HTTP_ADDR", "127.0.0.1:8500")
    return ClusterSettings(
        workdir=workdir,
        consul_binary=consul_binary,
        gateway_root_port=env_int(environ, "GATEWAY_PORT", 8080),
        consul_root_port=int(consul.rsplit(":", 1)[1]) if ":" in consul else 8500,
        postgres_admin_dsn=env_str(
            environ, "CLUSTER_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        database_prefix=env_str(environ, "CLUSTER_DATABASE_PREFIX", "tsunagu_cluster"),
        amqp_url=env_str(environ, "SHOP_AMQP_URL", DEFAULT_AMQP_URL),
        forwarded_ports=tuple(int(port) for port in env_list(environ, "CLUSTER_FORWARD_PORTS")),
        child_env=child_env,
        mtls=mtls,
        say=partial(print, flush=True),
    )


def try_lines(shop: ClusterShop) -> list[str]:
    """What to try against the running cluster, with this run's own namespace names."""
    assert shop.network is not None and shop.consul is not None
    app = next(c for c in shop.children if c.name == "inventory")
    namespace = shop.network.hosts[app.host].namespace
    cli = shown(shop.token_files["cli"])
    switch = shop.network.switch
    link = shop.network.hosts[app.host].switch_side
    consul = f"CONSUL_HTTP_ADDR={shop.consul_address} CONSUL_HTTP_TOKEN_FILE={cli}"
    leader = shop.consul.leader_host(shop.topology.consul_servers[0])
    return [
        f"{consul} .venv/bin/mesh status",
        f"{consul} .venv/bin/mesh cert --client cli --out .run/certs/cli",
        f"ip netns exec {namespace} .venv/bin/grpcurl -insecure -cert .run/certs/cli/cert.pem "
        f"-key .run/certs/cli/key.pem {app.address}:{app.port} list",
        ".venv/bin/mesh instances",
        ".venv/bin/mesh scale inventory 3",
        ".venv/bin/mesh restart payment",
        f"cut {app.host} off:        ip -n {switch} link set {link} down   (heal: … up)",
        f"kill the Consul leader:  kill -9 {shop.consul.agents[leader].pid}   ({leader})",
    ]


def main() -> int:
    environ = dict(os.environ)
    try:
        security = security_settings_from_env(environ)
        topology = load_topology(ROOT / env_str(environ, "MESH_TOPOLOGY", str(DEFAULT_CLUSTER_TOPOLOGY)))
    except (ConfigError, TopologyError) as error:
        print(f"cannot start: {error}", file=sys.stderr)
        return 1
    if topology.single_host or topology.consul_mode != "cluster":
        print(
            f"cannot start: {shown(topology.path)} is a single-host topology: `make run` runs it",
            file=sys.stderr,
        )
        return 1
    try:
        settings = settings_from_env(
            environ, mtls=security.mtls, child_env=prepare(environ), consul_binary=find_consul(ROOT)
        )
    except (ConfigError, ValueError) as error:  # ValueError: a port that is not a number
        print(f"cannot start: {error}", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print("cannot start: hosts are network namespaces, and `ip netns` needs root", file=sys.stderr)
        return 1
    state_file = Path(env_str(environ, "MESH_CLUSTER_STATE", str(settings.workdir / "state.json")))
    control_file = ROOT / control_file_path(environ)
    for name in sweep():
        print(f"  removed {name} (left by a run that did not stop)", flush=True)
    signal.signal(signal.SIGTERM, interrupt)  # SIGTERM stops it as Ctrl-C does
    signal.signal(signal.SIGINT, signal.default_int_handler)
    shop = ClusterShop(topology, settings)
    control: ControlServer | None = None
    try:
        print(f"starting the shop across hosts ({shown(topology.path)}):", flush=True)
        if security.insecure:
            print(f"\n  !!! {INSECURE_WARNING} !!!\n", flush=True)
        shop.start()
        shop.write_state(state_file)
        supervisor = Supervisor(say=settings.say)
        for child in shop.children:
            supervisor.watch(child, child.respawn, child.ready)
        fleet: Fleet[Placed] = Fleet(
            supervisor,
            shop.children,
            lambda service: shop.start_instance(service, shop.least_loaded_host(service)),
            lambda started: None,  # each instance's readiness is Consul's passing check already
            SERVICES,
            say=settings.say,
        )
        control = ControlServer(fleet, say=settings.say)
        control.start(control_file)
        rest = curl_lines(settings.gateway_root_port)
        print("\ntry REST through the gateway (on host edge):\n" + "\n".join(f"  {line}" for line in rest))
        print("\ntry the mesh and its faults:\n" + "\n".join(f"  {line}" for line in try_lines(shop)))
        print(f"\nlogs: {shown(shop.log_dir)}/ · hosts and agents: {shown(state_file)}")
        print("Ctrl-C stops everything and removes every namespace.", flush=True)
        supervisor.run()
        print("every instance was given up on: nothing left to serve", file=sys.stderr)
        return 1
    except (LaunchError, ConsulAclError, NetworkError, TimeoutError) as error:
        print(f"cannot start: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
        return 0
    finally:
        if control is not None:
            control.close()
            control_file.unlink(missing_ok=True)
        shop.close()
        state_file.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
