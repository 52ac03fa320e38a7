"""The ``mesh`` command: operator tools that need no running process of ours.

``mesh keygen DIR`` writes an Ed25519 key pair for signing and verifying tokens.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mesh.identity import generate_keypair


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    result: int = options.run(options)
    return result


if __name__ == "__main__":
    sys.exit(main())
