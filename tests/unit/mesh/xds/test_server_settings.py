"""``mesh xds`` settings: the environment, options over it, and errors that name the setting."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mesh.errors import ConfigError
from mesh.xds.settings import XdsSettings, add_arguments, xds_settings


def options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_without_anything_set() -> None:
    settings = xds_settings({})
    assert (settings.host, settings.port, settings.admin_port) == ("127.0.0.1", 18000, 0)
    assert settings.consul_address == "http://127.0.0.1:8500" and not settings.insecure
    assert settings.bootstrap_out is None and settings.certificates_dir is None
    assert settings.node_id == "local-client" and not settings.stale


def test_options_win_over_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "cli.token"
    token_file.write_text("secret-cli\n")
    environ = {
        "MESH_XDS_PORT": "19000",
        "MESH_XDS_ADMIN_PORT": "19001",
        "CONSUL_HTTP_ADDR": "http://127.0.0.1:8600",
        "CONSUL_HTTP_TOKEN": "secret-xds",
        "MESH_CONSUL_STALE": "1",
        "MESH_INSECURE": "1",
        "MESH_POLICY__inventory__retry__max_attempts": "3",
    }
    settings = xds_settings(
        environ,
        options(
            "--port", "0", "--bootstrap-out", "b.json", "--client-identity", "cli",
            "--client-token-file", str(token_file),
        ),
    )  # fmt: skip
    assert (settings.port, settings.admin_port) == (0, 19001)
    assert settings.consul_address == "http://127.0.0.1:8600" and settings.consul_token == "secret-xds"
    assert settings.stale and settings.insecure and settings.bootstrap_out == Path("b.json")
    assert settings.client_token == "secret-cli" and settings.certificates_dir == Path(".mesh-certs/cli")
    assert settings.policy.service("inventory").call.retry.max_attempts == 3
    assert "secret" not in repr(settings)


def test_bad_values_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="MESH_XDS_PORT"):
        xds_settings({"MESH_XDS_PORT": "http"})
    with pytest.raises(ConfigError, match="MESH_XDS_ADMIN_PORT"):
        XdsSettings(admin_port=70000)
    with pytest.raises(ConfigError, match="--client-identity"):
        xds_settings({}, options("--client-certs", "certs"))
    with pytest.raises(ConfigError, match="client token file"):
        xds_settings({}, options("--client-identity", "cli", "--client-token-file", "/nonexistent/token"))
