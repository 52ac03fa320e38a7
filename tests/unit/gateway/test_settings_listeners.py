"""The settings of the gateway's listeners: timeouts, the connection cap, metrics, Consul."""

from __future__ import annotations

import pytest

from gateway.registration import GatewayRegistrar, gateway_instance
from gateway.settings import settings_from_env
from mesh.errors import ConfigError


def test_defaults_and_environment() -> None:
    defaults = settings_from_env({})
    assert (defaults.header_timeout_seconds, defaults.max_connections, defaults.metrics_port) == (
        10.0,
        1024,
        0,
    )
    assert defaults.address == "127.0.0.1"
    tuned = settings_from_env(
        {
            "GATEWAY_HOST": "0.0.0.0",
            "GATEWAY_ADVERTISE_HOST": "10.0.0.7",
            "GATEWAY_HEADER_TIMEOUT_SECONDS": "2.5",
            "GATEWAY_MAX_CONNECTIONS": "64",
            "GATEWAY_METRICS_PORT": "9180",
            "CONSUL_HTTP_ADDR": "http://127.0.0.1:8500",
        }
    )
    assert (tuned.header_timeout_seconds, tuned.max_connections, tuned.metrics_port) == (2.5, 64, 9180)
    assert tuned.address == "10.0.0.7"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GATEWAY_HEADER_TIMEOUT_SECONDS": "0"}, "GATEWAY_HEADER_TIMEOUT_SECONDS"),
        ({"GATEWAY_MAX_CONNECTIONS": "0"}, "GATEWAY_MAX_CONNECTIONS"),
        ({"GATEWAY_METRICS_PORT": "70000"}, "GATEWAY_METRICS_PORT"),
        ({"GATEWAY_METRICS_PORT": "8080", "GATEWAY_PORT": "8080"}, "GATEWAY_METRICS_PORT"),
        ({"GATEWAY_HOST": "0.0.0.0", "CONSUL_HTTP_ADDR": "http://127.0.0.1:8500"}, "GATEWAY_ADVERTISE_HOST"),
    ],
)
def test_unusable_values_fail_the_start_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        settings_from_env(env)


def test_the_registration_carries_the_metrics_port_and_an_http_readiness_check() -> None:
    instance = gateway_instance("10.0.0.7", 8080, 9180)
    assert (instance.name, instance.id, instance.target) == (
        "gateway",
        "gateway-10.0.0.7-8080",
        "10.0.0.7:8080",
    )
    assert dict(instance.meta) == {"metrics_port": "9180", "mtls": "on"}
    assert gateway_instance("10.0.0.7", 8080, 9180, mtls=False).meta["mtls"] == "off"
    check = GatewayRegistrar("http://127.0.0.1:1").check_for(instance)
    assert check["HTTP"] == "http://10.0.0.7:8080/readyz" and check["Method"] == "GET"
    assert check["Interval"] == "1s" and check["DeregisterCriticalServiceAfter"] == "60s"
