"""mesh.app's settings: what a team's own service reads from the environment."""

from __future__ import annotations

import pytest

from mesh.app import app_settings_from_env
from mesh.errors import ConfigError


def test_the_default_port_holds_until_mesh_port_says_otherwise() -> None:
    assert app_settings_from_env("quotes", {}, port=50060).server.port == 50060
    assert app_settings_from_env("quotes", {"MESH_PORT": "50099"}, port=50060).server.port == 50099
    assert app_settings_from_env("quotes", {}, port=50060).name == "quotes"


def test_a_static_upstream_named_only_in_the_environment_is_read() -> None:
    """A team's service knows no shop defaults: MESH_UPSTREAM_<NAME> alone must be enough."""
    settings = app_settings_from_env(
        "quotes", {"MESH_UPSTREAM_INVENTORY": "127.0.0.1:1,127.0.0.1:2"}, port=50060
    )
    assert settings.upstreams.static == {"inventory": ("127.0.0.1:1", "127.0.0.1:2")}
    with pytest.raises(ConfigError, match="MESH_UPSTREAM_INVENTORY"):
        app_settings_from_env("quotes", {"MESH_UPSTREAM_INVENTORY": "nowhere"}, port=50060)


def test_the_built_in_policy_sits_below_the_environment() -> None:
    builtin = {"services": {"inventory": {"retry": {"max_attempts": 4}}}}
    settings = app_settings_from_env("quotes", {}, port=50060, policy=builtin)
    assert settings.policy.service("inventory").call.retry.max_attempts == 4
    overridden = app_settings_from_env(
        "quotes", {"MESH_POLICY__inventory__retry__max_attempts": "2"}, port=50060, policy=builtin
    )
    assert overridden.policy.service("inventory").call.retry.max_attempts == 2


def test_discovery_mode_is_checked() -> None:
    consul = {"CONSUL_HTTP_ADDR": "127.0.0.1:8500"}
    assert app_settings_from_env("quotes", consul, port=1).discovery_address == "127.0.0.1:8500"
    assert (
        app_settings_from_env("quotes", {**consul, "MESH_DISCOVERY": "static"}, port=1).discovery_address
        == ""
    )
    with pytest.raises(ConfigError, match="MESH_DISCOVERY"):
        app_settings_from_env("quotes", {"MESH_DISCOVERY": "dns"}, port=1)
