"""Talk to a running supervisor's control endpoint: ``mesh scale`` and ``mesh restart``.

A supervisor (the shop's launcher, services/launcher.py) that accepts operators' changes
serves them over HTTP on loopback and writes where, with a bearer secret, to a control file
(JSON ``{"url": ..., "token": ...}``, mode 0600, ``.run/control.json`` by default). Whoever
can read that file may scale and restart the shop's processes, which is why it is private to
the user who started the supervisor and why the secret never appears on a command line.

The protocol is the mesh's, not the shop's: ``POST /v1/scale {"service", "count"}``,
``POST /v1/restart {"service"}``, ``GET /v1/instances``. Every answer is JSON with ``ok``,
the ``lines`` the supervisor printed while it worked, and ``error`` when it refused.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError

DEFAULT_CONTROL_FILE = Path(".run/control.json")
CONTROL_FILE_VARIABLE = "MESH_CONTROL_FILE"


@dataclass(frozen=True)
class ControlFile:
    """Where a supervisor's control endpoint listens, and the secret it wants."""

    url: str
    token: str = field(repr=False)


@dataclass(frozen=True)
class ControlAnswer:
    """What the supervisor answered: whether it did it, and what it printed meanwhile."""

    ok: bool
    lines: tuple[str, ...]
    error: str = ""
    data: Any = None


class ControlUnavailable(ConfigError):
    """No supervisor answers at the control file's address (or there is no control file)."""


def control_file_path(environ: dict[str, str] | None = None) -> Path:
    """``$MESH_CONTROL_FILE``, else ``.run/control.json`` (relative to the current directory)."""
    value = (environ if environ is not None else dict(os.environ)).get(CONTROL_FILE_VARIABLE, "")
    return Path(value) if value else DEFAULT_CONTROL_FILE


def write_control_file(path: Path, control: ControlFile) -> None:
    """Write ``control`` readable by its owner only (created 0600, never widened)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an existing file keeps its mode on O_CREAT: make it private
    with os.fdopen(descriptor, "w") as file:
        json.dump({"url": control.url, "token": control.token}, file)


def read_control_file(path: Path) -> ControlFile:
    try:
        raw = json.loads(path.read_text())
        return ControlFile(str(raw["url"]), str(raw["token"]))
    except FileNotFoundError:
        raise ControlUnavailable(f"no supervisor control file at {path} (is `make run` running?)") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ControlUnavailable(f"{path} is not a control file: {error}") from None


def request(
    control: ControlFile, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 600.0
) -> ControlAnswer:
    """One call to the control endpoint; waits for the operation to finish (``timeout``)."""
    data = None if body is None else json.dumps(body).encode()
    call = urllib.request.Request(control.url.rstrip("/") + path, data=data, method=method)
    call.add_header("Authorization", f"Bearer {control.token}")
    call.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            return _answer(response.read())
    except urllib.error.HTTPError as error:  # a refusal still carries the JSON answer
        return _answer(error.read(), fallback=f"HTTP {error.code}")
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ControlUnavailable(f"no supervisor answers at {control.url}: {reason}") from None


def _answer(payload: bytes, fallback: str = "") -> ControlAnswer:
    try:
        raw = json.loads(payload)
        return ControlAnswer(
            bool(raw.get("ok")),
            tuple(str(x) for x in raw.get("lines", ())),
            str(raw.get("error", "")),
            raw.get("data"),
        )
    except (ValueError, AttributeError):
        return ControlAnswer(False, (), fallback or "the supervisor's answer was not JSON")
