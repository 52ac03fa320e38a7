"""``mesh dashboard`` settings: options over the environment, validation, the CLI's subcommand."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.cli import build_parser
from mesh.dashboard.settings import DashboardSettings, dashboard_settings
from mesh.errors import ConfigError


def test_defaults() -> None:
    settings = dashboard_settings({})
    assert settings == DashboardSettings()
    assert (settings.host, settings.port, settings.otlp_port, settings.interval) == ("127.0.0.1", 0, 0, 1.0)
    assert settings.consul_address == "http://127.0.0.1:8500"


def test_environment_then_options(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    environ = {
        "MESH_DASHBOARD_PORT": "8090",
        "MESH_DASHBOARD_OTLP_PORT": "4317",
        "MESH_DASHBOARD_INTERVAL_SECONDS": "0.5",
        "CONSUL_HTTP_ADDR": "http://127.0.0.1:9500",
        "CONSUL_HTTP_TOKEN_FILE": str(token),
    }
    settings = dashboard_settings(environ)
    assert (settings.port, settings.otlp_port, settings.interval) == (8090, 4317, 0.5)
    assert settings.consul_address == "http://127.0.0.1:9500"
    assert settings.consul_token == "secret-token"
    assert "secret-token" not in repr(settings)
    options = build_parser().parse_args(
        ["dashboard", "--port", "0", "--otlp-port", "4400", "--consul", "127.0.0.1:8600", "--max-traces", "5"]
    )
    settings = dashboard_settings(environ, options)
    assert (settings.port, settings.otlp_port, settings.max_traces) == (0, 4400, 5)
    assert settings.consul_address == "127.0.0.1:8600"
    assert settings.interval == 0.5  # no option: the environment's
    assert not settings.register
    registering = dashboard_settings(
        {"MESH_DASHBOARD_ADVERTISE_HOST": "10.0.0.5"}, build_parser().parse_args(["dashboard", "--register"])
    )
    assert registering.register and registering.address == "10.0.0.5"
    assert dashboard_settings({"MESH_DASHBOARD_REGISTER": "1"}).register


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"MESH_DASHBOARD_PORT": "70000"}, "MESH_DASHBOARD_PORT"),
        ({"MESH_DASHBOARD_PORT": "x"}, "MESH_DASHBOARD_PORT"),
        ({"MESH_DASHBOARD_PORT": "9000", "MESH_DASHBOARD_OTLP_PORT": "9000"}, "must differ"),
        ({"MESH_DASHBOARD_INTERVAL_SECONDS": "0"}, "MESH_DASHBOARD_INTERVAL_SECONDS"),
        ({"MESH_DASHBOARD_MAX_TRACES": "0"}, "MESH_DASHBOARD_MAX_TRACES"),
        ({"MESH_DASHBOARD_REGISTER": "yes"}, "MESH_DASHBOARD_REGISTER"),
    ],
)
def test_bad_settings_name_their_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        dashboard_settings(environ)
