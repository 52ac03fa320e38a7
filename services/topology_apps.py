"""Your own services beside the shop: the ``[apps.<name>]`` tables of a topology file.

A team that puts a service on the mesh wants to see it among the others at once: registered
in Consul with its own identity, allowed to call what it calls and nothing else, served as
REST by the gateway from its proto's http rules, on the dashboard. ``make run`` does all of
that for every app its topology file lists (``MESH_TOPOLOGY=examples/quotes/topology.toml
make run``; docs/guide.md)::

    [apps.quotes]
    module = "quotes_service"           # started as `python -m quotes_service`
    pythonpath = [".", "gen"]           # where that module and its generated code are, from this file
    port = 50060                        # the first instance's port (more take free ports)
    instances = 1
    protos = ["quotes.v1.quotes_pb2"]   # the gateway serves these modules' http rules
    calls = ["inventory"]               # the only services it may call (intentions)
    public = ["quotes.v1.QuoteService.GetQuote"]  # callable through the gateway without a token

What the launcher does with it: an ACL token for the identity ``quotes`` (register and get a
certificate for that name only), intentions ``gateway -> quotes``, ``cli -> quotes`` and one
per ``calls`` entry, the instances started after the shop's services (and supervised like
them), and the gateway started with the app's proto modules and public methods added to its
own. Apps run on the single host of ``make run`` only (``consul.mode = "dev"``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

APP_KEYS = frozenset({"module", "pythonpath", "port", "instances", "protos", "calls", "public"})
REQUIRED_KEYS = ("module", "port")

APP_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
"""Like a host name: it becomes a Consul service name, an ACL identity and a log file name."""

RESERVED_NAMES = frozenset({"gateway", "cli", "xds", "dashboard", "consul"})
"""Identities the launcher already gives out: an app by one of these names would share them."""

DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
FULL_METHOD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){2,}")
"""``package.Service.Method``: the form the gateway's public-method list takes."""


@dataclass(frozen=True)
class App:
    """One service of the team's own, run by ``make run`` beside the shop."""

    name: str
    module: str
    port: int
    instances: int = 1
    pythonpath: tuple[Path, ...] = ()
    """Absolute directories put first on the app's (and the gateway's) PYTHONPATH."""
    protos: tuple[str, ...] = ()
    calls: tuple[str, ...] = ()
    public: tuple[str, ...] = ()


class AppError(ValueError):
    """An ``[apps.<name>]`` table that cannot be run; the message names the key."""


def load_apps(table: Any, base: Path, services: Iterable[str]) -> tuple[App, ...]:
    """Check the ``[apps]`` table; relative ``pythonpath`` entries are taken from ``base``.

    ``services`` are the shop's names: an app may call them or another app, and may not
    take one of their names.
    """
    if not isinstance(table, dict):
        raise AppError("apps: must be a table of [apps.<name>] tables")
    shop = tuple(services)
    callable_names = {*shop, *table}
    apps: list[App] = []
    ports: dict[int, str] = {}
    for name, entry in table.items():
        key = f"apps.{name}"
        if not isinstance(name, str) or not APP_NAME.fullmatch(name):
            raise AppError(f"{key}: an app name is lower-case words joined by hyphens")
        if name in shop or name in RESERVED_NAMES:
            raise AppError(f"{key}: {name!r} is already a name on the mesh; choose another")
        if not isinstance(entry, dict):
            raise AppError(f"{key}: must be a table")
        unknown = sorted(set(entry) - APP_KEYS)
        if unknown:
            raise AppError(f"{key}.{unknown[0]}: unknown key (known: {', '.join(sorted(APP_KEYS))})")
        for required in REQUIRED_KEYS:
            if required not in entry:
                raise AppError(f"{key}.{required}: missing")
        app = App(
            name=name,
            module=_matching(key, "module", entry["module"], DOTTED, "a dotted module name"),
            port=_int(key, "port", entry["port"], 1, 65535),
            instances=_int(key, "instances", entry.get("instances", 1), 1, 16),
            pythonpath=tuple((base / p).resolve() for p in _strings(key, "pythonpath", entry)),
            protos=tuple(
                _matching(key, "protos", p, DOTTED, "a dotted module name")
                for p in _strings(key, "protos", entry)
            ),
            calls=tuple(_strings(key, "calls", entry)),
            public=tuple(
                _matching(key, "public", m, FULL_METHOD, "package.Service.Method")
                for m in _strings(key, "public", entry)
            ),
        )
        for callee in app.calls:
            if callee not in callable_names:
                raise AppError(f"{key}.calls: {callee!r} is neither a shop service nor an app")
        if app.port in ports:
            raise AppError(f"{key}.port: {app.port} is already apps.{ports[app.port]}'s port")
        ports[app.port] = name
        apps.append(app)
    return tuple(apps)


def _int(key: str, field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AppError(f"{key}.{field}: must be an int within {low}..{high}, not {value!r}")
    return value


def _strings(key: str, field: str, entry: dict[str, Any]) -> list[str]:
    value = entry.get(field, [])
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise AppError(f"{key}.{field}: must be a list of non-empty strings")
    return value


def _matching(key: str, field: str, value: Any, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise AppError(f"{key}.{field}: {value!r} is not {what}")
    return value
