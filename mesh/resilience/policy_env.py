"""Environment overrides for the policy file: ``MESH_POLICY__<service>__<key>[__<key>…]``.

Why overrides at all: a deployment tweaks one number (more attempts for one service in one
environment) without shipping a new file. They are applied to the parsed TOML tree *before*
validation, so an override is checked exactly like the file and its errors name the same
key path, plus the variable that set it.

Mapping (``__`` separates path segments; segments are case-sensitive, like the file's keys):

* ``MESH_POLICY__payment__retry__max_attempts=3`` -> ``services.payment.retry.max_attempts``
* ``MESH_POLICY__payment__methods__Capture__timeout=10`` -> ``…methods.Capture.timeout``
* ``MESH_POLICY__defaults__breaker__open_wait=30`` -> ``defaults.breaker.open_wait``

Values are read as TOML values when they parse as one (``3``, ``0.5``, ``inf``,
``["UNAVAILABLE", "INTERNAL"]``) and as plain strings otherwise; code lists also accept a
comma-separated string (``UNAVAILABLE,INTERNAL``).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from typing import Any

from mesh.errors import ConfigError

PREFIX = "MESH_POLICY__"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_path(parts: Iterable[str]) -> str:
    """A dotted key path as TOML writes it: keys that are not bare are quoted."""
    return ".".join(part if _BARE_KEY.fullmatch(part) else json.dumps(part) for part in parts)


def env_value(raw: str) -> object:
    """An override's value: a TOML value when ``raw`` is one, else the stripped string."""
    try:
        parsed = tomllib.loads(f"value = {raw}")
    except tomllib.TOMLDecodeError:
        return raw.strip()
    return parsed["value"] if len(parsed) == 1 else raw.strip()


def apply_env(tree: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``tree`` with every ``MESH_POLICY__`` override applied, and ``{key path: variable}``.

    The input is not modified. Raises ConfigError naming the variable when its name does
    not map to a key path.
    """
    result = _copy_tables(tree)
    origins: dict[str, str] = {}
    for name in sorted(environ):
        if not name.startswith(PREFIX):
            continue
        parts = name[len(PREFIX) :].split("__")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"{name}: expected {PREFIX}<service>__<key>[__<key>...]")
        path = ["defaults", *parts[1:]] if parts[0] == "defaults" else ["services", *parts]
        table = result
        for depth, part in enumerate(path[:-1]):
            child = table.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {key_path(path[: depth + 1])} is not a table")
            table = child
        table[path[-1]] = env_value(environ[name])
        origins[key_path(path)] = name
    return result, origins


def _copy_tables(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _copy_tables(value) if isinstance(value, Mapping) else value for key, value in tree.items()}
