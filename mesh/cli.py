"""The ``mesh`` command: operator tools that need no running process of ours.

``mesh keygen DIR`` writes an Ed25519 key pair for signing and verifying tokens;
``mesh status`` shows what Consul knows: services, instances, health, and the endpoints a
mesh channel in this process would pick; ``mesh sagas`` lists sagas that are not terminal,
through the application's module named by ``MESH_SAGAS_MODULE`` (``services.order.sagas`` for the shop).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mesh.identity import generate_keypair
from mesh.status import run_status


def keygen(options: argparse.Namespace) -> int:
    private, public = generate_keypair(Path(options.directory))
    print(f"private key: {private}\npublic key:  {public}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mesh", description="tsunagu service mesh tools")
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keygen", help="write an Ed25519 JWT key pair into a directory")
    keys.add_argument("directory")
    keys.set_defaults(run=keygen)
    status = commands.add_parser(
        "status", help="services, instances, health and the endpoints calls would go to"
    )
    status.add_argument("services", nargs="*", help="only these services (default: all)")
    status.add_argument("--consul", default=os.environ.get("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500"))
    status.add_argument("--tag", action="append", default=[], help="only instances with this tag")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=show_status)
    sagas = commands.add_parser("sagas", help="sagas that are not terminal (runs $MESH_SAGAS_MODULE)")
    sagas.add_argument("--module", default=os.environ.get("MESH_SAGAS_MODULE", ""))
    sagas.add_argument("args", nargs=argparse.REMAINDER, help="passed to the module, e.g. --json")
    sagas.set_defaults(run=show_sagas)
    return parser


def show_sagas(options: argparse.Namespace) -> int:
    """Delegate to the application's saga module: the mesh itself knows no sagas."""
    if not options.module:
        print(
            "mesh sagas: set MESH_SAGAS_MODULE (the shop's: services.order.sagas) or --module",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(options.module)
    result: int = module.main(options.args)
    return result


def show_status(options: argparse.Namespace) -> int:
    return run_status(options.consul, options.services, tags=tuple(options.tag), as_json=options.json)


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    result: int = options.run(options)
    return result


if __name__ == "__main__":
    sys.exit(main())
