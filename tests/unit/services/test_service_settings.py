"""Each service's own settings: typed, read from the environment once, errors naming the variable."""

from __future__ import annotations

import dataclasses

import pytest

from mesh.errors import ConfigError
from services.common.messaging.consumer_settings import ConsumerSettings, consumer_settings_from_env
from services.common.messaging.relay import RelaySettings
from services.common.settings import ServiceSettings, env_bool, service_settings_from_env, service_variables
from services.inventory.settings import InventorySettings, inventory_settings_from_env
from services.order.saga.faults import CrashAt
from services.order.saga.runner import SagaSettings
from services.order.settings import OrderSettings, order_settings_from_env
from services.payment.domain import PaymentPolicy
from services.payment.settings import payment_settings_from_env
from services.shipping.domain import ShippingPolicy
from services.shipping.settings import ShippingSettings, shipping_settings_from_env
from services.user.settings import user_settings_from_env


def test_the_shared_settings_carry_no_untyped_map_of_the_rest() -> None:
    assert "extra" not in {f.name for f in dataclasses.fields(ServiceSettings)}


def test_service_variables_are_the_prefixed_ones_without_their_prefix() -> None:
    environ = {"ORDER_SAGA_LEASE_SECONDS": "3", "ORDERLY": "x", "PAYMENT_X": "y"}
    assert service_variables("order", environ) == {"SAGA_LEASE_SECONDS": "3"}


def test_env_bool_reads_yes_and_no_words_and_names_a_bad_variable() -> None:
    assert env_bool({}, "X_FLAG", True) is True
    assert env_bool({"X_FLAG": " Yes "}, "X_FLAG", False) is True
    assert env_bool({"X_FLAG": "0"}, "X_FLAG", True) is False
    with pytest.raises(ConfigError, match=r"X_FLAG must be one of .* got 'maybe'"):
        env_bool({"X_FLAG": "maybe"}, "X_FLAG", False)


def test_consumer_settings_come_from_the_service_prefixed_variables() -> None:
    environ = {"PAYMENT_CONSUMER_PREFETCH": "4", "PAYMENT_CONSUMER_MAX_ATTEMPTS": "2"}
    settings = consumer_settings_from_env(environ, "payment", "billing", ["order.confirmed"])
    assert settings == ConsumerSettings("billing", ("order.confirmed",), prefetch=4, max_attempts=2)
    assert consumer_settings_from_env({}, "user", "notifications", ()).prefetch == 32


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("USER_CONSUMER_PREFETCH", "many", "USER_CONSUMER_PREFETCH must be an integer"),
        ("USER_CONSUMER_PREFETCH", "0", "USER_CONSUMER_PREFETCH must be within 1..1000"),
        ("USER_CONSUMER_MAX_ATTEMPTS", "0", "USER_CONSUMER_MAX_ATTEMPTS must be at least 1"),
        ("USER_CONSUMER_FAULT_DELAY_SECONDS", "-1", "USER_CONSUMER_FAULT_DELAY_SECONDS must be >= 0"),
    ],
)
def test_a_bad_consumer_variable_is_named(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        user_settings_from_env({variable: value})


def test_payment_settings() -> None:
    own = payment_settings_from_env({"PAYMENT_DECLINE_ABOVE_MINOR": "500", "PAYMENT_CONSUMER_PREFETCH": "8"})
    assert own.policy == PaymentPolicy(500)
    assert (own.billing.name, own.billing.routing_keys, own.billing.prefetch) == (
        "billing",
        ("order.confirmed",),
        8,
    )
    with pytest.raises(ConfigError, match="PAYMENT_DECLINE_ABOVE_MINOR must be an integer"):
        payment_settings_from_env({"PAYMENT_DECLINE_ABOVE_MINOR": "lots"})


def test_shipping_settings() -> None:
    assert shipping_settings_from_env({}) == ShippingSettings(ShippingPolicy())
    own = shipping_settings_from_env({"SHIPPING_SUPPORTED_COUNTRIES": "BR", "SHIPPING_TRANSIT_DAYS": "9"})
    assert own.policy == ShippingPolicy(frozenset({"BR"}), 9)
    with pytest.raises(ConfigError, match="SHIPPING_TRANSIT_DAYS"):
        shipping_settings_from_env({"SHIPPING_TRANSIT_DAYS": "soon"})


def test_inventory_settings() -> None:
    assert inventory_settings_from_env({}) == InventorySettings(seed_demo=False)
    assert inventory_settings_from_env({"INVENTORY_SEED_DEMO": "1"}).seed_demo is True
    with pytest.raises(ConfigError, match="INVENTORY_SEED_DEMO"):
        inventory_settings_from_env({"INVENTORY_SEED_DEMO": "please"})


def test_user_settings() -> None:
    own = user_settings_from_env({"USER_CONSUMER_MAX_ATTEMPTS": "7"})
    assert own.notifications.name == "notifications" and own.notifications.max_attempts == 7
    assert own.notifications.routing_keys == ("order.created", "order.confirmed", "order.cancelled")


def test_order_settings() -> None:
    assert order_settings_from_env({}) == OrderSettings(SagaSettings(), crash_at=None)
    own = order_settings_from_env(
        {
            "ORDER_SAGA_LEASE_SECONDS": "3",
            "ORDER_SAGA_RETRY_BASE_SECONDS": "0.5",
            "ORDER_SAGA_RETRY_MAX_SECONDS": "4",
            "ORDER_FAULT_CRASH_AT": "compensating:undo_payment",
            "ORDER_OUTBOX_CLAIM_SECONDS": "2.5",
        }
    )
    assert own == OrderSettings(
        SagaSettings(3.0, 0.5, 4.0), CrashAt("compensating", "undo_payment"), RelaySettings(claim_seconds=2.5)
    )
    assert order_settings_from_env({}).relay.claim_seconds == 10.0
    for bad, message in (
        ("soon", "must be a number"),
        ("0", "must be a finite"),
        ("inf", "must be a finite"),
    ):
        with pytest.raises(ConfigError, match=f"ORDER_OUTBOX_CLAIM_SECONDS {message}"):
            order_settings_from_env({"ORDER_OUTBOX_CLAIM_SECONDS": bad})
    with pytest.raises(ConfigError, match="ORDER_SAGA_RETRY_BASE_SECONDS must be a number"):
        order_settings_from_env({"ORDER_SAGA_RETRY_BASE_SECONDS": "fast"})
    with pytest.raises(ConfigError, match="ORDER_FAULT_CRASH_AT"):
        order_settings_from_env({"ORDER_FAULT_CRASH_AT": "after_commit:nothing"})


def test_trusted_callers_and_security_come_from_the_environment() -> None:

    defaults = service_settings_from_env("payment", {})
    assert defaults.trusted_callers == ("order",) and defaults.security.mtls
    chosen = service_settings_from_env(
        "payment", {"MESH_TRUSTED_CALLERS": " order, billing ,order", "MESH_INSECURE": "1"}
    )
    assert chosen.trusted_callers == ("order", "billing") and chosen.security.insecure
    assert service_settings_from_env("user", {"MESH_TRUSTED_CALLERS": "none"}).trusted_callers == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("order,gateway", "must not name the gateway"),
        ("order,Bad Name", "'Bad Name' is not a service name"),
    ],
)
def test_unusable_trusted_callers_fail_naming_the_variable(value: str, message: str) -> None:
    from services.common.settings import service_settings_from_env

    with pytest.raises(ConfigError, match=f"MESH_TRUSTED_CALLERS.*{message}"):
        service_settings_from_env("payment", {"MESH_TRUSTED_CALLERS": value})


def test_discovery_follows_consul_unless_told_static() -> None:
    consul = {"CONSUL_HTTP_ADDR": "127.0.0.1:8500"}
    assert service_settings_from_env("order", consul).discovery_address == "127.0.0.1:8500"
    static = service_settings_from_env("order", {**consul, "MESH_DISCOVERY": "Static"})
    assert static.static_discovery and static.discovery_address == ""
    assert static.consul_address == "127.0.0.1:8500"  # still registers and takes its certificate there
    assert service_settings_from_env("order", {}).discovery_address == ""  # no Consul: static anyway
    with pytest.raises(ConfigError, match="MESH_DISCOVERY must be 'consul' or 'static', got 'dns'"):
        service_settings_from_env("order", {"MESH_DISCOVERY": "dns"})


def test_a_services_built_in_policy_sits_below_the_environment() -> None:
    builtin = {"services": {"inventory": {"retry": {"max_attempts": 4}}}}
    assert (
        service_settings_from_env("order", {}, builtin).policy.service("inventory").call.retry.max_attempts
        == 4
    )
    environ = {"MESH_POLICY__inventory__retry__max_attempts": "2"}
    assert (
        service_settings_from_env("order", environ, builtin)
        .policy.service("inventory")
        .call.retry.max_attempts
        == 2
    )
