"""Validation helpers shared by the policy dataclasses.

Every check raises :class:`FieldError`: a :class:`~mesh.errors.ConfigError` that also says
which field was wrong. Code that builds a policy by hand reads ``"max_attempts: must be
between 1 and 5, got 9"``; the policy file loader uses ``field`` to rewrite the message
with the full key path (``services.payment.retry.max_attempts: …``).
"""

from __future__ import annotations

import math

from mesh.errors import ConfigError


class FieldError(ConfigError):
    """A field of a policy is invalid; ``related`` names fields a cross-check involved."""

    def __init__(self, field: str, reason: str, related: tuple[str, ...] = ()) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.related = related


def require_int(field: str, value: object, low: int, high: int | None = None) -> None:
    """``value`` is an int (not a bool) within ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(field, f"must be an integer, got {value!r}")
    if high is not None and not low <= value <= high:
        raise FieldError(field, f"must be between {low} and {high}, got {value}")
    if value < low:
        raise FieldError(field, f"must be >= {low}, got {value}")


def require_number(field: str, value: object) -> float:
    """``value`` is a real number (int or float, not a bool, not NaN); returned as float."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise FieldError(field, f"must be a number, got {value!r}")
    return float(value)


def require_positive(field: str, value: object, *, allow_inf: bool = False) -> None:
    """``value`` is a number > 0 (and finite unless ``allow_inf``)."""
    number = require_number(field, value)
    if number <= 0 or (math.isinf(number) and not allow_inf):
        bound = "> 0" if allow_inf else "> 0 and finite"
        raise FieldError(field, f"must be {bound}, got {value}")


def require_percent(field: str, value: object) -> None:
    """``value`` is a percentage in (0, 100]: 0 % would trip on the first call."""
    number = require_number(field, value)
    if not 0 < number <= 100:
        raise FieldError(field, f"must be within (0, 100], got {value}")
