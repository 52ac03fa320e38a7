"""The ``mesh`` command: argument parsing and what each subcommand runs."""

from __future__ import annotations

import importlib.util
import re
import sys
import time
from pathlib import Path

import jwt
import pytest

from mesh import cli
from mesh.identity import JwtSettings
from mesh.verifier import JwtVerifier


def test_keygen_writes_a_usable_key_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keygen", str(tmp_path / "keys")]) == 0
    private, public = tmp_path / "keys" / "jwt-private.pem", tmp_path / "keys" / "jwt-public.pem"
    out = capsys.readouterr().out
    assert f"private key: {private}" in out and f"public key:  {public}" in out
    assert private.stat().st_mode & 0o777 == 0o600
    pem = public.read_text()
    keys = JwtSettings(public_keys={"k": pem})
    now = int(time.time())
    claims = {
        "sub": "u",
        "roles": ["customer"],
        "iss": keys.issuer,
        "aud": keys.audience,
        "iat": now,
        "exp": now + 60,
    }
    token = jwt.encode(claims, private.read_text(), algorithm="EdDSA", headers={"kid": "k"})
    principal = JwtVerifier(keys).verify(token)
    assert principal.subject == "u"  # signed with one half, verified with the other


@pytest.mark.parametrize("argv", [[], ["keygen"], ["keygen", "dir", "--json"], ["status", "--bogus"]])
def test_bad_command_lines_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2


def test_status_passes_its_options_to_run_status(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str], tuple[str, ...], bool]] = []

    def run_status(
        consul: str, services: list[str], *, tags: tuple[str, ...], as_json: bool, token: str = ""
    ) -> int:
        calls.append((consul, services, tags, as_json))
        return 3

    monkeypatch.setattr(cli, "run_status", run_status)
    argv = [
        "status",
        "order",
        "user",
        "--consul",
        "http://127.0.0.1:9",
        "--tag",
        "v2",
        "--tag",
        "eu",
        "--json",
    ]
    assert cli.main(argv) == 3
    assert calls == [("http://127.0.0.1:9", ["order", "user"], ("v2", "eu"), True)]


def test_status_defaults_to_consul_http_addr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "http://127.0.0.1:8600")
    options = cli.build_parser().parse_args(["status"])
    assert (options.consul, options.services, options.tag, options.json) == (
        "http://127.0.0.1:8600",
        [],
        [],
        False,
    )


def test_sagas_without_a_module_explains_and_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MESH_SAGAS_MODULE", raising=False)
    assert cli.main(["sagas"]) == 2
    hint = capsys.readouterr().err
    assert "set MESH_SAGAS_MODULE" in hint
    # The shop's module the hint names is one that exists (it moved once and the hint did not).
    named = re.search(r"the shop's: ([\w.]+)", hint)
    assert named is not None and importlib.util.find_spec(named.group(1)) is not None


def test_sagas_delegates_to_the_named_module_with_the_remaining_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fake_sagas_for_cli.py").write_text(
        "seen = []\ndef main(args):\n    seen.append(list(args))\n    return 7\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MESH_SAGAS_MODULE", "fake_sagas_for_cli")
    try:
        assert cli.main(["sagas", "--json", "--limit", "5"]) == 7  # a leading option is the module's
        assert cli.main(["sagas"]) == 7
        monkeypatch.delenv("MESH_SAGAS_MODULE")
        assert cli.main(["sagas", "x", "--module", "fake_sagas_for_cli", "--limit=2"]) == 7
        seen = sys.modules["fake_sagas_for_cli"].seen
        assert seen == [["--json", "--limit", "5"], [], ["x", "--limit=2"]]
    finally:
        sys.modules.pop("fake_sagas_for_cli", None)
