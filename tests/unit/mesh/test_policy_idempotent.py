"""The policy's ``idempotent`` key, and built-in policies below the operator's file.

``idempotent`` lets a policy say a method is safe to repeat when its proto does not; a
program's built-in tree (the gateway's reads, the order service's participant calls) applies
only to keys the operator's file and environment leave unset, at any layer.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

import services.order.__main__ as order_main
from gateway.settings import settings_from_env
from mesh.channel.resilience import MethodPolicy
from mesh.errors import ConfigError
from mesh.resilience.policy_config import CallPolicy, parse_policy
from shop.inventory.v1 import inventory_pb2

GET_PRODUCT = "/shop.inventory.v1.InventoryService/GetProduct"
RESERVE = "/shop.inventory.v1.InventoryService/ReserveStock"
AUTHORIZE = "/shop.payment.v1.PaymentService/AuthorizePayment"

BUILTIN: dict[str, Any] = {
    "defaults": {"timeout": 4.0},
    "services": {
        "inventory": {
            "retry": {"max_attempts": 2},
            "methods": {
                GET_PRODUCT: {
                    "idempotent": True,
                    "retry": {"max_attempts": 3, "per_attempt_timeout": 1.0},
                }
            },
        }
    },
}


def parse(text: str, builtin: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Any:
    return parse_policy(tomllib.loads(text), environ, builtin=builtin)


# -- the key ---------------------------------------------------------------------------------


def test_idempotent_is_read_per_service_and_per_method_and_unset_by_default() -> None:
    policy = parse(
        """
        [services.inventory]
        idempotent = true
        [services.inventory.methods.ReserveStock]
        idempotent = false
        """
    )
    inventory = policy.service("inventory")
    assert inventory.for_method(GET_PRODUCT).idempotent is True
    assert inventory.for_method(RESERVE).idempotent is False
    assert policy.service("payment").for_method(AUTHORIZE).idempotent is None
    assert CallPolicy().idempotent is None


def test_idempotent_can_be_set_from_the_environment() -> None:
    policy = parse("", environ={"MESH_POLICY__inventory__methods__GetProduct__idempotent": "true"})
    assert policy.service("inventory").for_method(GET_PRODUCT).idempotent is True


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[services.inventory]\nidempotent = "yes"', "services.inventory.idempotent: must be true or false"),
        (
            "[services.inventory.methods.GetProduct]\nidempotent = 1",
            "services.inventory.methods.GetProduct.idempotent: must be true or false",
        ),
        ("[defaults]\nidempotent = true", "defaults.idempotent: says one service's or method's calls"),
    ],
)
def test_a_bad_idempotent_key_is_named_by_its_path(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert str(caught.value).startswith(message)


def test_the_policy_key_decides_whether_a_request_without_a_key_may_repeat() -> None:
    unkeyed = inventory_pb2.GetProductRequest(sku="TEA-SENCHA")
    assert not MethodPolicy(CallPolicy(), idempotent=False).may_repeat(unkeyed)  # the proto's word
    assert MethodPolicy(CallPolicy(idempotent=True), idempotent=False).may_repeat(unkeyed)
    assert not MethodPolicy(CallPolicy(idempotent=False), idempotent=True).may_repeat(unkeyed)
    keyed = inventory_pb2.ReleaseStockRequest(reservation_id="r", request_id="k")
    assert MethodPolicy(CallPolicy(idempotent=False), idempotent=False).may_repeat(keyed)


# -- built-in trees below the operator's -----------------------------------------------------


def test_a_builtin_tree_applies_where_the_file_is_silent() -> None:
    inventory = parse("", BUILTIN).service("inventory")
    method = inventory.for_method(GET_PRODUCT)
    assert method.idempotent is True and method.timeout == 4.0
    assert method.retry.max_attempts == 3 and method.retry.per_attempt_timeout == 1.0
    assert inventory.for_method(RESERVE).retry.max_attempts == 2
    assert parse("", BUILTIN).service("payment").call.timeout == 4.0


@pytest.mark.parametrize(
    "text",
    [
        "[defaults.retry]\nmax_attempts = 1",  # the file's defaults beat a built-in method
        "[services.inventory.retry]\nmax_attempts = 1",
        "[services.inventory.methods.GetProduct.retry]\nmax_attempts = 1",  # bare over full path
        f'[services.inventory.methods."{GET_PRODUCT}".retry]\nmax_attempts = 1',
    ],
)
def test_any_key_the_file_sets_wins_over_the_builtin_tree(text: str) -> None:
    method = parse(text, BUILTIN).service("inventory").for_method(GET_PRODUCT)
    assert method.retry.max_attempts == 1
    assert method.retry.per_attempt_timeout == 1.0 and method.idempotent is True  # the rest stays


def test_the_environment_wins_over_the_builtin_tree_too() -> None:
    environ = {"MESH_POLICY__inventory__idempotent": "false", "MESH_POLICY__defaults__timeout": "9"}
    method = parse("", BUILTIN, environ).service("inventory").for_method(GET_PRODUCT)
    assert method.idempotent is False and method.timeout == 9.0


def test_a_bad_builtin_tree_says_it_is_the_builtin_one() -> None:
    with pytest.raises(
        ConfigError, match=r"^built-in policy: services\.inventory\.retry\.tries: unknown key"
    ):
        parse("", {"services": {"inventory": {"retry": {"tries": 2}}}})


# -- the programs' built-in policies ---------------------------------------------------------


def test_the_gateway_gives_its_get_routes_short_repeatable_attempts_by_default() -> None:
    policy = settings_from_env({}).policy
    for service, path in [
        ("inventory", GET_PRODUCT),
        ("inventory", "/shop.inventory.v1.InventoryService/ListProducts"),
        ("order", "/shop.order.v1.OrderService/GetOrder"),
    ]:
        method = policy.service(service).for_method(path)
        assert method.idempotent is True, path
        assert method.retry.per_attempt_timeout == 1.0
        assert method.retry.max_attempts == 3
        assert method.retry.retryable_codes == {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    for service, path in [
        ("inventory", RESERVE),
        ("order", "/shop.order.v1.OrderService/CreateOrder"),
        ("order", "/shop.order.v1.OrderService/WatchOrder"),  # a GET stream keeps its time
    ]:
        method = policy.service(service).for_method(path)
        assert method.idempotent is None and method.retry.max_attempts == 1, path
        assert method.retry.per_attempt_timeout is None


def test_the_gateway_operators_policy_file_wins_over_its_read_defaults(tmp_path: Path) -> None:
    file = tmp_path / "policy.toml"
    file.write_text("[services.inventory.methods.GetProduct.retry]\nper_attempt_timeout = 2.5\n")
    environ = {"MESH_POLICY_FILE": str(file), "MESH_POLICY__inventory__retry__max_attempts": "2"}
    method = settings_from_env(environ).policy.service("inventory").for_method(GET_PRODUCT)
    assert method.retry.per_attempt_timeout == 2.5 and method.retry.max_attempts == 2
    assert method.idempotent is True


def test_the_order_service_gives_participant_calls_short_attempts_within_the_step_budget() -> None:
    builtin = getattr(order_main, "UPSTREAM_POLICY", None)  # what __main__ hands services.common.app
    assert builtin is not None
    policy = parse("", builtin)
    step = policy.service("payment").for_method(AUTHORIZE)
    assert step.retry.per_attempt_timeout == 1.5 and step.retry.max_attempts == 3
    assert step.retry.retryable_codes == {"UNAVAILABLE", "DEADLINE_EXCEEDED"}
    assert step.idempotent is None  # steps may repeat by their request_id keys
    assert policy.service("inventory").for_method(GET_PRODUCT).idempotent is True
    assert policy.service("user").for_method("/shop.user.v1.UserService/GetUser").idempotent is True
    operator = parse("[services.payment.retry]\nmax_attempts = 1", builtin)
    assert operator.service("payment").for_method(AUTHORIZE).retry.max_attempts == 1
