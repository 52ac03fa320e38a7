"""The policy file: a valid file round-trips, every bad key is named by path, env wins."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from mesh.errors import ConfigError
from mesh.resilience.breaker import BreakerConfig
from mesh.resilience.budget import BudgetConfig
from mesh.resilience.policy_config import (
    CallPolicy,
    PolicySettings,
    load_policy,
    parse_policy,
    policy_from_env,
)
from mesh.resilience.policy_env import env_value
from mesh.resilience.retry import RetryPolicy

POLICY = """
[defaults]
timeout = 5

[defaults.retry]
max_attempts = 3
retryable_codes = ["UNAVAILABLE"]
initial_backoff = 0.05
backoff_multiplier = 2.0
max_backoff = 1.0

[defaults.breaker]
window_size = 20
minimum_calls = 10
failure_rate_threshold = 50
slow_call_duration = 2.0
slow_call_rate_threshold = 80
open_wait = 15
half_open_permits = 3

[defaults.budget]
ratio = 0.2
min_retries_per_second = 10
ttl = 10

[services.payment]
timeout = 2.0

[services.payment.retry]
max_attempts = 2
per_attempt_timeout = 0.5

[services.payment.breaker]
consecutive_failures = 5
open_wait = 60

[services.payment.methods.Capture]
timeout = 10.0

[services.payment.methods.Capture.retry]
max_attempts = 1

[services.payment.methods."/shop.payment.v1.PaymentService/Void".retry]
retryable_codes = ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]

[services.inventory.budget]
ratio = 0.1
"""

AUTHORIZE = "/shop.payment.v1.PaymentService/Authorize"
CAPTURE = "/shop.payment.v1.PaymentService/Capture"
VOID = "/shop.payment.v1.PaymentService/Void"


def write(tmp_path: Path, text: str = POLICY) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def parse(text: str, environ: dict[str, str] | None = None) -> PolicySettings:
    return parse_policy(tomllib.loads(text), environ or {})


def test_valid_file_loads_every_value(tmp_path: Path) -> None:
    settings = load_policy(write(tmp_path), {})
    defaults = settings.defaults
    assert defaults.call.timeout == 5.0
    assert defaults.call.retry.max_attempts == 3
    assert defaults.call.retry.backoff.initial == 0.05
    assert defaults.call.retry.backoff.maximum == 1.0
    assert defaults.breaker == BreakerConfig(
        window_size=20,
        minimum_calls=10,
        failure_rate_threshold=50.0,
        slow_call_duration=2.0,
        slow_call_rate_threshold=80.0,
        open_wait=15.0,
        half_open_permits=3,
    )
    payment = settings.service("payment")
    assert payment.breaker == BreakerConfig.consecutive(5, 60.0)
    assert payment.budget == BudgetConfig()
    assert settings.service("inventory").budget == BudgetConfig(ratio=0.1)


def test_method_over_service_over_defaults(tmp_path: Path) -> None:
    settings = load_policy(write(tmp_path), {})
    authorize = settings.service("payment").for_method(AUTHORIZE)  # not listed: the service's
    assert authorize.timeout == 2.0
    assert authorize.retry.max_attempts == 2
    assert authorize.retry.per_attempt_timeout == 0.5
    assert authorize.retry.backoff.initial == 0.05  # from defaults
    capture = settings.service("payment").for_method(CAPTURE)  # listed by bare name
    assert (capture.timeout, capture.retry.max_attempts) == (10.0, 1)
    assert capture.retry.per_attempt_timeout == 0.5  # from the service
    assert settings.service("payment").for_method("Capture") is capture
    void = settings.service("payment").for_method(VOID)  # listed by full path
    assert void.retry.retryable_codes == frozenset({"UNAVAILABLE", "RESOURCE_EXHAUSTED"})
    assert void.retry.max_attempts == 2
    unknown = settings.service("shipping").for_method("/shop.shipping.v1.ShippingService/Schedule")
    assert unknown == settings.defaults.call
    assert unknown.timeout == 5.0


def test_no_file_means_built_in_defaults() -> None:
    settings = load_policy(None, {})
    assert settings == PolicySettings()
    assert settings.service("any").for_method("/a.B/C") == CallPolicy(None, RetryPolicy(max_attempts=1))
    assert settings.service("any").breaker == BreakerConfig()


def test_env_overrides_win(tmp_path: Path) -> None:
    environ = {
        "MESH_POLICY_FILE": str(write(tmp_path)),
        "MESH_POLICY__payment__retry__max_attempts": "3",
        "MESH_POLICY__payment__methods__Capture__timeout": "12.5",
        "MESH_POLICY__defaults__retry__retryable_codes": "UNAVAILABLE,INTERNAL",
        "MESH_POLICY__shipping__breaker__consecutive_failures": "3",
        "MESH_POLICY__inventory__budget__ratio": "0.5",
        "UNRELATED": "x",
    }
    settings = policy_from_env(environ)
    assert settings.service("payment").for_method(AUTHORIZE).retry.max_attempts == 3
    assert settings.service("payment").for_method(CAPTURE).timeout == 12.5
    assert settings.service("payment").for_method(CAPTURE).retry.max_attempts == 1  # the file's method layer
    assert settings.service("user").for_method("/x.Y/Z").retry.retryable_codes == {"UNAVAILABLE", "INTERNAL"}
    assert settings.service("shipping").breaker == BreakerConfig.consecutive(3, 15.0)
    assert settings.service("inventory").budget.ratio == 0.5


def test_env_override_errors_name_path_and_variable() -> None:
    environ = {"MESH_POLICY__payment__retry__max_attempts": "9"}
    with pytest.raises(ConfigError) as caught:
        parse("", environ)
    assert str(caught.value) == (
        "services.payment.retry.max_attempts: must be between 1 and 5, got 9 "
        "(set by MESH_POLICY__payment__retry__max_attempts)"
    )


@pytest.mark.parametrize("name", ["MESH_POLICY__payment", "MESH_POLICY__payment____timeout"])
def test_malformed_override_names_are_rejected(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}: expected"):
        parse("", {name: "1"})


def test_override_below_a_scalar_is_rejected() -> None:
    with pytest.raises(
        ConfigError, match=r"^MESH_POLICY__payment__timeout__x: services.payment.timeout is not a table"
    ):
        parse("[services.payment]\ntimeout = 1\n", {"MESH_POLICY__payment__timeout__x": "1"})


@pytest.mark.parametrize(
    ("raw", "value"),
    [("3", 3), ("0.5", 0.5), ("inf", float("inf")), ('["A", "B"]', ["A", "B"]), ("A,B", "A,B"), (" x ", "x")],
)
def test_env_values_are_toml_or_text(raw: str, value: Any) -> None:
    assert env_value(raw) == value


INVALID = [
    (
        "[services.payment.retry]\nmax_attempts = 9",
        "services.payment.retry.max_attempts: must be between 1 and 5, got 9",
    ),
    ("[defaults.retry]\nmax_attempts = 0", "defaults.retry.max_attempts: must be between 1 and 5, got 0"),
    ("[defaults.retry]\nmax_attempts = 2.5", "defaults.retry.max_attempts: must be an integer, got 2.5"),
    (
        '[defaults.retry]\nretryable_codes = ["NOPE"]',
        "defaults.retry.retryable_codes: unknown status code 'NOPE'",
    ),
    (
        "[defaults.retry]\nretryable_codes = 5",
        "defaults.retry.retryable_codes: must be a list of status code names",
    ),
    ("[services.a.retry]\ninitial_backoff = 0", "services.a.retry.initial_backoff: must be > 0 and finite"),
    ("[services.a.retry]\nbackoff_multiplier = 0.5", "services.a.retry.backoff_multiplier: must be >= 1"),
    (
        "[services.a.retry]\nmax_backoff = 0.01",
        "services.a.retry.max_backoff: must be >= the initial backoff",
    ),
    ("[services.a.retry]\nper_attempt_timeout = -1", "services.a.retry.per_attempt_timeout: must be > 0"),
    ("[services.a.retry]\nmax_attempt = 2", "services.a.retry.max_attempt: unknown key"),
    ("[services.a]\ntimeout = 0", "services.a.timeout: must be > 0"),
    ('[services.a]\ntimeout = "5s"', "services.a.timeout: must be a number, got '5s'"),
    ("[services.a]\ntimeout = true", "services.a.timeout: must be a number, got True"),
    (
        "[services.a]\nretries = 2",
        "services.a.retries: unknown key (expected one of: timeout, idempotent, retry, breaker, budget, balancer, fault, methods)",
    ),
    (
        "[defaults]\nmethods = {}",
        "defaults.methods: unknown key (expected one of: timeout, retry, breaker, budget, balancer)",
    ),
    ("[services.a.breaker]\nwindow_size = 0", "services.a.breaker.window_size: must be >= 1, got 0"),
    ("[services.a.breaker]\nminimum_calls = -3", "services.a.breaker.minimum_calls: must be >= 1"),
    (
        "[services.a.breaker]\nfailure_rate_threshold = 150",
        "services.a.breaker.failure_rate_threshold: must be within (0, 100]",
    ),
    ("[services.a.breaker]\nslow_call_duration = 0", "services.a.breaker.slow_call_duration: must be > 0"),
    (
        "[services.a.breaker]\nslow_call_rate_threshold = 0",
        "services.a.breaker.slow_call_rate_threshold: must be within",
    ),
    ("[services.a.breaker]\nopen_wait = -1", "services.a.breaker.open_wait: must be > 0"),
    ("[services.a.breaker]\nhalf_open_permits = 0", "services.a.breaker.half_open_permits: must be >= 1"),
    (
        '[services.a.breaker]\nignored_codes = ["UNAVAILABLE"]',
        "services.a.breaker.ignored_codes: must not overlap failure_codes",
    ),
    ('[services.a.breaker]\nfailure_codes = ["OK"]', "services.a.breaker.failure_codes: must not contain OK"),
    (
        "[services.a.breaker]\nconsecutive_failures = 0",
        "services.a.breaker.consecutive_failures: must be >= 1",
    ),
    (
        "[services.a.breaker]\nconsecutive_failures = 5\nwindow_size = 10",
        "services.a.breaker.consecutive_failures: cannot be combined with window_size",
    ),
    ("[services.a.breaker]\nwindow = 10", "services.a.breaker.window: unknown key"),
    ("[services.a.budget]\nratio = -1", "services.a.budget.ratio: must be between 0 and 1000"),
    ("[services.a.budget]\nttl = 0.1", "services.a.budget.ttl: must be between 1 and 60 seconds"),
    (
        "[services.a.budget]\nmin_retries_per_second = -1",
        "services.a.budget.min_retries_per_second: must be >= 0",
    ),
    ("[services.a.methods.M]\ntimeout = -2", "services.a.methods.M.timeout: must be > 0"),
    (
        "[services.a.methods.M.retry]\nmax_attempts = 6",
        "services.a.methods.M.retry.max_attempts: must be between 1 and 5",
    ),
    (
        "[services.a.methods.M.breaker]\nopen_wait = 1",
        "services.a.methods.M.breaker: breaker is kept per endpoint and service",
    ),
    (
        "[services.a.methods.M.budget]\nratio = 1",
        "services.a.methods.M.budget: budget is kept per endpoint and service",
    ),
    ('[services.a.methods."Svc/M"]\ntimeout = 1', 'services.a.methods."Svc/M": a method is named bare'),
    (
        '[services.a.methods."/p.S/M".retry]\nmax_attempts = 7',
        'services.a.methods."/p.S/M".retry.max_attempts: must be between',
    ),
    ("[services.a]\nmethods = 3", "services.a.methods: must be a table, got 3"),
    ("[services]\na = 3", "services.a: must be a table, got 3"),
    ("[services.a]\nretry = 3", "services.a.retry: must be a table, got 3"),
    ("[service.a]\ntimeout = 1", "service: unknown key (expected one of: defaults, services)"),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[message.split(":")[0] for _, message in INVALID])
def test_each_invalid_key_is_named_by_its_path(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert str(caught.value).startswith(message)


def test_cross_field_error_blames_the_layer_that_broke_it() -> None:
    text = "[defaults.retry]\nmax_backoff = 1.0\n[services.a.retry]\ninitial_backoff = 5.0\n"
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert str(caught.value) == (
        "services.a.retry.initial_backoff: conflicts with defaults.retry.max_backoff, "
        "which must be >= the initial backoff (5.0), got 1.0"
    )


def test_cross_field_error_with_a_built_in_default() -> None:
    with pytest.raises(ConfigError) as caught:
        parse("[services.a.retry]\ninitial_backoff = 5.0\n")
    assert str(caught.value) == (
        "services.a.retry.initial_backoff: conflicts with max_backoff (built-in default), "
        "which must be >= the initial backoff (5.0), got 2.0"
    )


def test_service_consecutive_form_replaces_the_default_window() -> None:
    text = "[defaults.breaker]\nwindow_size = 50\nopen_wait = 20\n[services.a.breaker]\nconsecutive_failures = 4\n"
    settings = parse(text)
    assert settings.service("a").breaker == BreakerConfig.consecutive(4, 20.0)
    assert settings.defaults.breaker.window_size == 50


def test_service_window_form_replaces_a_default_consecutive_form() -> None:
    text = "[defaults.breaker]\nconsecutive_failures = 4\n[services.a.breaker]\nwindow_size = 10\nminimum_calls = 10\n"
    settings = parse(text)
    assert settings.defaults.breaker == BreakerConfig.consecutive(4)
    assert settings.service("a").breaker == BreakerConfig(window_size=10, minimum_calls=10)


def test_missing_and_broken_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"policy file .*missing\.toml: No such file"):
        load_policy(tmp_path / "missing.toml", {})
    with pytest.raises(ConfigError, match=r"policy file .*policy\.toml: "):
        load_policy(write(tmp_path, "[defaults\n"), {})
