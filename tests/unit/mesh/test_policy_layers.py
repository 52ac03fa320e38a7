"""The policy file's layers: flattening, merging the two breaker forms, and whom an error blames."""

from __future__ import annotations

import pytest

from mesh.errors import ConfigError
from mesh.resilience.breaker_config import BreakerConfig
from mesh.resilience.budget import BudgetConfig
from mesh.resilience.policy_layers import CONSECUTIVE, Entry, LayerLoader, overlay

DEFAULTS = ("defaults",)
PAYMENT = ("services", "payment")


def test_a_layer_is_flattened_with_where_each_value_was_written() -> None:
    flat = LayerLoader({}).layer(
        {"timeout": 2, "retry": {"max_attempts": 3, "retryable_codes": "unavailable, internal"}},
        PAYMENT,
        method=False,
    )
    assert flat == {
        "timeout": Entry(2.0, PAYMENT, "services.payment.timeout"),
        "retry.max_attempts": Entry(3, PAYMENT, "services.payment.retry.max_attempts"),
        "retry.retryable_codes": Entry(
            ["unavailable", "internal"], PAYMENT, "services.payment.retry.retryable_codes"
        ),
    }
    assert isinstance(flat["timeout"].value, float)  # an integer written for a float key


@pytest.mark.parametrize(
    ("table", "where", "method", "message"),
    [
        (
            {"retry": {"tries": 2}},
            DEFAULTS,
            False,
            r"^defaults\.retry\.tries: unknown key \(expected one of: ",
        ),
        (
            {"breaker": {}},
            (*PAYMENT, "methods", "Capture"),
            True,
            r"breaker is kept per endpoint and service",
        ),
        (
            {"color": 1},
            DEFAULTS,
            False,
            r"^defaults\.color: unknown key \(expected one of: timeout, retry, breaker, budget, balancer\)$",
        ),
        (
            {"color": 1},
            PAYMENT,
            False,
            r"expected one of: timeout, idempotent, retry, breaker, budget, balancer, fault, methods\)$",
        ),
        ({"retry": 3}, DEFAULTS, False, r"^defaults\.retry: must be a table, got 3$"),
        ({"retry": {"retryable_codes": 7}}, DEFAULTS, False, r"must be a list of status code names, got 7$"),
        (
            {"breaker": {"consecutive_failures": 3, "window_size": 10, "minimum_calls": 5}},
            DEFAULTS,
            False,
            r"^defaults\.breaker\.consecutive_failures: cannot be combined with minimum_calls, window_size",
        ),
    ],
)
def test_bad_tables_are_refused_at_their_key_path(
    table: dict[str, object], where: tuple[str, ...], method: bool, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        LayerLoader({}).layer(table, where, method=method)


def test_an_error_names_the_environment_variable_that_set_the_key() -> None:
    loader = LayerLoader({"defaults.timeout": "MESH_POLICY__DEFAULTS__TIMEOUT"})
    assert str(loader.error("defaults.timeout", "bad")) == (
        "defaults.timeout: bad (set by MESH_POLICY__DEFAULTS__TIMEOUT)"
    )
    assert str(loader.error("defaults.retry", "bad")) == "defaults.retry: bad"


def test_method_names_are_bare_or_full_paths() -> None:
    loader = LayerLoader({})
    loader.check_method_name("Capture", (*PAYMENT, "methods", "Capture"))
    loader.check_method_name("/shop.payment.v1.PaymentService/Capture", (*PAYMENT, "methods", "x"))
    with pytest.raises(ConfigError, match=r"a method is named bare"):
        loader.check_method_name("PaymentService/Capture", (*PAYMENT, "methods", "PaymentService/Capture"))


def test_the_two_breaker_forms_replace_each_other_whole() -> None:
    loader = LayerLoader({})
    window = loader.layer(
        {"breaker": {"window_size": 10, "minimum_calls": 5, "open_wait": 9}}, DEFAULTS, method=False
    )
    consecutive = loader.layer({"breaker": {"consecutive_failures": 4}}, PAYMENT, method=False)
    merged = overlay(window, consecutive)
    assert set(merged) == {CONSECUTIVE, "breaker.open_wait"}  # open_wait belongs to both forms
    assert loader.build_breaker(merged, PAYMENT) == BreakerConfig.consecutive(4, 9.0)
    back = overlay(merged, loader.layer({"breaker": {"window_size": 20}}, PAYMENT, method=False))
    assert CONSECUTIVE not in back
    assert loader.build_breaker(back, PAYMENT) == BreakerConfig(window_size=20, open_wait=9.0)


def test_a_field_error_blames_the_key_written_in_this_layer() -> None:
    loader = LayerLoader({})
    base = loader.layer({"retry": {"max_backoff": 1.0}}, DEFAULTS, method=False)
    flat = overlay(base, loader.layer({"retry": {"initial_backoff": 5.0}}, PAYMENT, method=False))
    with pytest.raises(ConfigError) as caught:
        loader.build_call_parts(flat, PAYMENT)
    assert str(caught.value) == (
        "services.payment.retry.initial_backoff: conflicts with defaults.retry.max_backoff, "
        "which must be >= the initial backoff (5.0), got 1.0"
    )


def test_a_bad_value_written_below_is_reported_where_it_was_written() -> None:
    loader = LayerLoader({})
    flat = loader.layer({"budget": {"ttl": 100}}, DEFAULTS, method=False)
    with pytest.raises(ConfigError, match=r"^defaults\.budget\.ttl: must be between 1 and 60 seconds"):
        loader.build_budget(flat, PAYMENT)


def test_retries_are_off_unless_the_layers_turn_them_on() -> None:
    loader = LayerLoader({})
    timeout, retry = loader.build_call_parts({}, DEFAULTS)
    assert (timeout, retry.max_attempts) == (None, 1)
    flat = loader.layer(
        {"timeout": 3, "retry": {"max_attempts": 4, "initial_backoff": 0.2}}, DEFAULTS, method=False
    )
    timeout, retry = loader.build_call_parts(flat, DEFAULTS)
    assert (timeout, retry.max_attempts, retry.backoff.initial) == (3.0, 4, 0.2)
    assert loader.build_budget({}, DEFAULTS) == BudgetConfig()
