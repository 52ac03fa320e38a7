"""The ``mesh`` command: operator tools that need no running process of ours.

``mesh keygen DIR`` writes an Ed25519 key pair for signing and verifying tokens;
``mesh cert NAME`` (or ``--client NAME``) writes a certificate, key and CA bundle from Consul
Connect's CA for tools such as grpcurl (the ACL token from ``CONSUL_HTTP_TOKEN(_FILE)``);
``mesh status`` shows what Consul knows: services, instances, health, and the endpoints a
mesh channel in this process would pick; ``mesh top`` shows every service's and every
caller -> callee edge's rps, success rate and latency, open breakers and open sagas, scraped
from each instance's ``metrics_port`` (mesh/observe/); ``mesh sagas`` lists sagas that are
not terminal, through the application's module named by ``MESH_SAGAS_MODULE`` (``services.order.saga.cli``
for the shop). ``mesh scale SERVICE N``, ``mesh restart SERVICE`` and ``mesh instances`` ask a
running supervisor (``make run``'s launcher) through its control endpoint (mesh/control.py).
``mesh xds`` runs the xDS control plane that lets plain gRPC clients use the mesh (mesh/xds/).
``mesh dashboard`` serves a live web page of the mesh and its recent traces (mesh/dashboard/).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mesh.connect.ca import ConnectUnavailable
from mesh.connect.cert_files import fetch_certificate, write_certificate
from mesh.connect.settings import consul_token_from_env
from mesh.control import ControlAnswer, ControlUnavailable, control_file_path, read_control_file, request
from mesh.dashboard.settings import add_arguments as add_dashboard_arguments
from mesh.errors import ConfigError
from mesh.identity import generate_keypair
from mesh.status import run_status
from mesh.xds.settings import add_arguments as add_xds_arguments


def keygen(options: argparse.Namespace) -> int:
    private, public = generate_keypair(Path(options.directory))
    print(f"private key: {private}\npublic key:  {public}")
    return 0


def cert(options: argparse.Namespace) -> int:
    name = options.client or options.service
    if not name or (options.client and options.service):
        print("mesh cert: name one service, or --client NAME", file=sys.stderr)
        return 2
    try:
        token = consul_token_from_env(os.environ)
        leaf, roots = asyncio.run(fetch_certificate(name, options.consul, token))
        files = write_certificate(leaf, roots, Path(options.out or f".mesh-certs/{name}"))
    except (ConnectUnavailable, ConfigError) as error:
        print(f"mesh cert: {error}", file=sys.stderr)
        return 2
    print(f"identity    {files.identity}  (valid until {files.valid_before})")
    print(f"certificate {files.cert}\nkey         {files.key}\nCA bundle   {files.ca}")
    print(f"servers present the name {files.server_names}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh", description="tsunagu service mesh tools")
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keygen", help="write an Ed25519 JWT key pair into a directory")
    keys.add_argument("directory")
    keys.set_defaults(run=keygen)
    certs = commands.add_parser(
        "cert", help="write a certificate, key and CA bundle from Consul Connect's CA (for grpcurl)"
    )
    certs.add_argument("service", nargs="?", help="a service whose identity to take (needs its token)")
    certs.add_argument("--client", metavar="NAME", help="a client identity, e.g. cli")
    certs.add_argument("--out", help="directory to write into (default .mesh-certs/NAME)")
    certs.add_argument("--consul", default=os.environ.get("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500"))
    certs.set_defaults(run=cert)
    status = commands.add_parser(
        "status", help="services, instances, health and the endpoints calls would go to"
    )
    status.add_argument("services", nargs="*", help="only these services (default: all)")
    status.add_argument("--consul", default=os.environ.get("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500"))
    status.add_argument("--tag", action="append", default=[], help="only instances with this tag")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=show_status)
    top = commands.add_parser(
        "top", help="live per-service and per-edge rps, success rate and latency, scraped from every instance"
    )
    top.add_argument("--consul", default=os.environ.get("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500"))
    top.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    top.add_argument(
        "--window", type=float, default=10.0, help="seconds the rates are taken over, at most (default 10)"
    )
    shots = top.add_mutually_exclusive_group()
    shots.add_argument("--json", action="store_true", help="print one sample (after one interval) as JSON")
    shots.add_argument("--once", action="store_true", help="print one sample (after one interval) and exit")
    top.set_defaults(run=show_top)
    # Every argument but --module goes to the module, in order (main collects them): an
    # argparse.REMAINDER positional would refuse a leading option such as ``mesh sagas --json``.
    sagas = commands.add_parser(
        "sagas",
        help="sagas that are not terminal (runs $MESH_SAGAS_MODULE; other arguments, e.g. --json, go to it)",
        allow_abbrev=False,
    )
    sagas.add_argument("--module", default=os.environ.get("MESH_SAGAS_MODULE", ""))
    sagas.set_defaults(run=show_sagas, args=[])
    scale = commands.add_parser("scale", help="run N instances of a service (a running supervisor does it)")
    scale.add_argument("service")
    scale.add_argument("count", type=int)
    restart = commands.add_parser("restart", help="restart a service's instances one at a time, drained")
    restart.add_argument("service")
    listed = commands.add_parser("instances", help="the instances a running supervisor keeps")
    xds = commands.add_parser(
        "xds", help="serve xDS (ADS) from Consul to plain gRPC clients; write their bootstrap file"
    )
    add_xds_arguments(xds)
    xds.set_defaults(run=run_xds)
    dashboard = commands.add_parser(
        "dashboard", help="a live web page of the mesh: topology, golden signals, resilience, traces"
    )
    add_dashboard_arguments(dashboard)
    dashboard.set_defaults(run=run_dashboard)
    for command in (scale, restart, listed):
        command.add_argument(
            "--control",
            type=Path,
            default=None,
            help="the supervisor's control file (default .run/control.json)",
        )
    scale.set_defaults(
        run=lambda o: control(o, "POST", "/v1/scale", {"service": o.service, "count": o.count})
    )
    restart.set_defaults(run=lambda o: control(o, "POST", "/v1/restart", {"service": o.service}))
    listed.set_defaults(run=lambda o: control(o, "GET", "/v1/instances", None))
    return parser


def control(options: argparse.Namespace, method: str, path: str, body: dict[str, object] | None) -> int:
    """Ask the supervisor; print what it printed while it worked; 0 when it did it."""
    try:
        answer: ControlAnswer = request(
            read_control_file(options.control or control_file_path(dict(os.environ))), method, path, body
        )
    except ControlUnavailable as error:
        print(f"mesh {options.command}: {error}", file=sys.stderr)
        return 2
    for line in answer.lines:
        print(line)
    if isinstance(answer.data, list):
        for row in answer.data:
            state = "running" if row.get("running") else "stopped"
            watched = "" if row.get("supervised") else "  (not supervised)"
            print(
                f"{row.get('name', ''):<10} {row.get('address', '127.0.0.1')}:{row.get('port')}  pid {row.get('pid')}  {state}{watched}"
            )
    if not answer.ok:
        print(f"mesh {options.command}: {answer.error}", file=sys.stderr)
        return 1
    return 0


def run_xds(options: argparse.Namespace) -> int:
    """``mesh xds``; its module (and the Envoy protos) load only for this command."""
    from mesh.xds.main import run_command

    return run_command(options)


def run_dashboard(options: argparse.Namespace) -> int:
    """``mesh dashboard``; aiohttp, gRPC and the collector load only for this command."""
    from mesh.dashboard.main import run_command

    return run_command(options)


def show_sagas(options: argparse.Namespace) -> int:
    """Delegate to the application's saga module: the mesh itself knows no sagas."""
    if not options.module:
        print(
            "mesh sagas: set MESH_SAGAS_MODULE (the shop's: services.order.saga.cli) or --module",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(options.module)
    result: int = module.main(options.args)
    return result


def show_status(options: argparse.Namespace) -> int:
    return run_status(
        options.consul,
        options.services,
        tags=tuple(options.tag),
        as_json=options.json,
        token=consul_token_from_env(os.environ),
    )


def show_top(options: argparse.Namespace) -> int:
    """``mesh top``; the collector (and aiohttp) load only for this command."""
    from mesh.observe.top import run_top

    if options.interval <= 0 or options.window < 0:
        print("mesh top: --interval must be > 0 and --window >= 0", file=sys.stderr)
        return 2
    try:
        token = consul_token_from_env(os.environ)
    except ConfigError as error:
        print(f"mesh top: {error}", file=sys.stderr)
        return 2
    return run_top(
        options.consul,
        token=token,
        interval=options.interval,
        window=options.window,
        as_json_output=options.json,
        once=options.once,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    options, extra = parser.parse_known_args(argv)
    if extra:
        if options.command != "sagas":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        options.args = extra
    result: int = options.run(options)
    return result


if __name__ == "__main__":
    sys.exit(main())
