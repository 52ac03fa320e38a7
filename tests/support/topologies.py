"""Topology files written by tests: the single-host layout, with each service's instance count.

The text is what deploy/local.toml says without its comments, so a test can load it, start a
launcher on it, or break one line of it (``services.order`` is the file's last line).
"""

from __future__ import annotations

from services.topology import SERVICES


def single_host(**counts: int) -> str:
    """A dev agent and one host, ``local`` on 127.0.0.1 with the gateway; ``counts``: service ->
    instances on it (1 for a service not named)."""
    unknown = sorted(set(counts) - set(SERVICES))
    assert not unknown, f"not services of the shop: {unknown}"
    services = "".join(f"{name} = {{ local = {counts.get(name, 1)} }}\n" for name in SERVICES)
    return f"""\
[consul]
mode = "dev"
servers = []

[hosts.local]
address = "127.0.0.1"
gateway = true

[services]
{services}"""
