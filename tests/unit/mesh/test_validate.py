"""Field checks of the policy dataclasses: each error names the field and the bad value."""

from __future__ import annotations

import math

import pytest

from mesh.errors import ConfigError
from mesh.resilience.validate import (
    FieldError,
    require_int,
    require_number,
    require_percent,
    require_positive,
)


def test_field_error_is_a_config_error_naming_the_field() -> None:
    error = FieldError("ttl", "must be > 0", related=("ratio",))
    assert isinstance(error, ConfigError)
    assert str(error) == "ttl: must be > 0"
    assert (error.field, error.reason, error.related) == ("ttl", "must be > 0", ("ratio",))


@pytest.mark.parametrize(
    ("value", "high", "message"),
    [
        (True, None, "n: must be an integer, got True"),
        (2.0, None, "n: must be an integer, got 2.0"),
        ("3", None, "n: must be an integer, got '3'"),
        (0, None, "n: must be >= 1, got 0"),
        (6, 5, "n: must be between 1 and 5, got 6"),
        (0, 5, "n: must be between 1 and 5, got 0"),
    ],
)
def test_require_int_refuses(value: object, high: int | None, message: str) -> None:
    with pytest.raises(FieldError) as caught:
        require_int("n", value, 1, high)
    assert str(caught.value) == message


def test_require_int_accepts_the_bounds() -> None:
    require_int("n", 1, 1, 5)
    require_int("n", 5, 1, 5)
    require_int("n", 10**9, 1)


def test_require_number_returns_a_float_and_refuses_nan_and_bools() -> None:
    assert require_number("x", 3) == 3.0 and isinstance(require_number("x", 3), float)
    assert require_number("x", math.inf) == math.inf
    for bad in (math.nan, False, "1.5", None):
        with pytest.raises(FieldError, match=r"^x: must be a number"):
            require_number("x", bad)


def test_require_positive_and_infinity() -> None:
    require_positive("wait", 0.001)
    require_positive("wait", math.inf, allow_inf=True)
    with pytest.raises(FieldError, match=r"^wait: must be > 0 and finite, got inf$"):
        require_positive("wait", math.inf)
    with pytest.raises(FieldError, match=r"^wait: must be > 0, got 0$"):
        require_positive("wait", 0, allow_inf=True)
    with pytest.raises(FieldError, match=r"^wait: must be > 0 and finite, got -1$"):
        require_positive("wait", -1)


def test_require_percent_is_a_half_open_interval() -> None:
    require_percent("rate", 100)
    require_percent("rate", 0.5)
    for bad in (0, 100.01, -5):
        with pytest.raises(FieldError, match=r"^rate: must be within \(0, 100\]"):
            require_percent("rate", bad)
