"""The control file a supervisor writes, and how the client reads it and reports failures."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from mesh.control import (
    ControlFile,
    ControlUnavailable,
    control_file_path,
    read_control_file,
    request,
    write_control_file,
)


def test_the_file_is_private_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "run" / "control.json"
    path.parent.mkdir()
    path.write_text("{}")
    path.chmod(0o644)  # an older, readable file is made private when rewritten
    write_control_file(path, ControlFile("http://127.0.0.1:1234", "s3cret"))
    assert path.stat().st_mode & 0o777 == 0o600
    control = read_control_file(path)
    assert control == ControlFile("http://127.0.0.1:1234", "s3cret")
    assert "s3cret" not in repr(control)


def test_a_missing_or_broken_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(
        ControlUnavailable, match=r"no supervisor control file at .*missing\.json \(is `make run` running\?\)"
    ):
        read_control_file(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"url": "http://127.0.0.1:1"}))
    with pytest.raises(ControlUnavailable, match="is not a control file"):
        read_control_file(broken)


def test_the_path_comes_from_the_environment_or_the_default() -> None:
    assert control_file_path({}) == Path(".run/control.json")
    assert control_file_path({"MESH_CONTROL_FILE": "/tmp/c.json"}) == Path("/tmp/c.json")


def test_no_supervisor_listening_is_control_unavailable_naming_the_address() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ControlUnavailable, match=f"no supervisor answers at http://127.0.0.1:{port}"):
        request(ControlFile(f"http://127.0.0.1:{port}", "x"), "GET", "/v1/instances", timeout=5)
