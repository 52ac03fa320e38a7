"""The policy file's layers: read each table, merge per key, build objects, name bad keys.

Each layer (defaults, a service, a method) is flattened to ``{"retry.max_attempts": Entry}``
where an entry remembers the key path it was written at. Layers merge per key, and the
policy dataclasses validate the merged values; when one rejects a field, the entry tells
which key path (and which environment variable, if any) to blame. Range rules thus live
once, in the dataclasses, and the file only adds where a value came from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

from mesh.errors import ConfigError
from mesh.resilience.backoff import Backoff
from mesh.resilience.breaker_config import BreakerConfig
from mesh.resilience.budget import BudgetConfig
from mesh.resilience.policy_env import key_path
from mesh.resilience.retry import RetryPolicy
from mesh.resilience.validate import FieldError

T = TypeVar("T")
INT, FLOAT, CODES, STR = "int", "float", "codes", "str"
IDEMPOTENT = "idempotent"  # a service's or method's calls are safe to repeat (not in [defaults])
SECTIONS: dict[str, dict[str, str]] = {
    "retry": {
        "max_attempts": INT,
        "retryable_codes": CODES,
        "initial_backoff": FLOAT,
        "backoff_multiplier": FLOAT,
        "max_backoff": FLOAT,
        "per_attempt_timeout": FLOAT,
    },
    "breaker": {
        "window_size": INT,
        "minimum_calls": INT,
        "failure_rate_threshold": FLOAT,
        "slow_call_duration": FLOAT,
        "slow_call_rate_threshold": FLOAT,
        "open_wait": FLOAT,
        "half_open_permits": INT,
        "failure_codes": CODES,
        "ignored_codes": CODES,
        "consecutive_failures": INT,
    },
    "budget": {"ratio": FLOAT, "min_retries_per_second": FLOAT, "ttl": FLOAT},
}
# Read only by the xDS control plane (``mesh xds``), never by the mesh channel: how grpc
# clients balance over a service, and faults (gRFC A33) to inject for chaos tests. A layer
# that writes any key of one of these sections replaces that whole section below it, so a
# service choosing round_robin does not inherit the defaults' ring_hash header.
XDS_SECTIONS: dict[str, dict[str, str]] = {
    "balancer": {"kind": STR, "hash_header": STR},
    "fault": {"abort_percent": FLOAT, "abort_code": STR, "delay_percent": FLOAT, "delay_seconds": FLOAT},
}
SERVICE_ONLY = frozenset({"fault"})  # a fault is injected into one service's calls: not in [defaults]
CONSECUTIVE = "breaker.consecutive_failures"
WINDOW_KEYS = frozenset(
    f"breaker.{key}"
    for key in (
        "window_size",
        "minimum_calls",
        "failure_rate_threshold",
        "slow_call_duration",
        "slow_call_rate_threshold",
        "half_open_permits",
    )
)
_RETRY_FIELDS = {
    "max_attempts": "retry.max_attempts",
    "retryable_codes": "retry.retryable_codes",
    "per_attempt_timeout": "retry.per_attempt_timeout",
    "initial": "retry.initial_backoff",
    "multiplier": "retry.backoff_multiplier",
    "maximum": "retry.max_backoff",
}


class Entry(NamedTuple):
    """One value of the file, with the layer and the key path it was written at."""

    value: Any
    layer: tuple[str, ...]
    path: str


Flat = Mapping[str, Entry]


def overlay(base: Flat, layer: Flat) -> dict[str, Entry]:
    """``layer`` over ``base`` per key; the two breaker forms, and each xDS section, replace
    what is below them whole."""
    merged = dict(base)
    for section in XDS_SECTIONS:
        prefix = f"{section}."
        if any(key.startswith(prefix) for key in layer):
            merged = {key: entry for key, entry in merged.items() if not key.startswith(prefix)}
    if CONSECUTIVE in layer:
        for key in WINDOW_KEYS:
            merged.pop(key, None)
    elif WINDOW_KEYS & layer.keys():
        merged.pop(CONSECUTIVE, None)
    merged.update(layer)
    return merged


class LayerLoader:
    """Reads layers and builds policies, turning field errors into key-path errors."""

    def __init__(self, origins: Mapping[str, str], label: str = "") -> None:
        self.origins = origins
        self.label = label  # before every path it names: which tree (a program's built-in one)

    def error(self, path: str, reason: str) -> ConfigError:
        """A ConfigError for ``path``, naming the environment variable that set it if one did."""
        variable = self.origins.get(path)
        return ConfigError(f"{self.label}{path}: {reason}" + (f" (set by {variable})" if variable else ""))

    def table(self, value: object, path: str) -> Mapping[str, Any]:
        """``value`` as a table, or an error naming ``path``."""
        if not isinstance(value, Mapping):
            raise self.error(path, f"must be a table, got {value!r}")
        return value

    def check_method_name(self, method: str, where: tuple[str, ...]) -> None:
        """A bare name (``Capture``) or a full path (``/pkg.Service/Capture``), nothing between."""
        if "/" in method and not (method.startswith("/") and method.count("/") == 2):
            reason = "a method is named bare (Capture) or by full path (/package.Service/Capture)"
            raise self.error(key_path(where), reason)

    def layer(self, table: Mapping[str, Any], where: tuple[str, ...], *, method: bool) -> dict[str, Entry]:
        """One layer's values, flattened; unknown keys and misplaced sections are errors."""
        sections = ("retry",) if method else tuple(SECTIONS)
        defaults = where == ("defaults",)
        xds = () if method else tuple(key for key in XDS_SECTIONS if not (defaults and key in SERVICE_ONLY))
        flat: dict[str, Entry] = {}
        for key, value in table.items():
            path = key_path((*where, key))
            if key == "timeout":
                flat[key] = Entry(_as_float(value), where, path)
            elif key == IDEMPOTENT and where != ("defaults",):
                if not isinstance(value, bool):
                    raise self.error(path, f"must be true or false, got {value!r}")
                flat[key] = Entry(value, where, path)
            elif key in sections or key in xds:
                kinds = SECTIONS[key] if key in SECTIONS else XDS_SECTIONS[key]
                for sub, sub_value in self.table(value, path).items():
                    sub_path = key_path((*where, key, sub))
                    if sub not in kinds:
                        raise self.error(sub_path, f"unknown key (expected one of: {', '.join(kinds)})")
                    flat[f"{key}.{sub}"] = Entry(
                        self._convert(kinds[sub], sub_value, sub_path), where, sub_path
                    )
            elif method and key in SECTIONS:
                raise self.error(path, f"{key} is kept per endpoint and service, not per method")
            elif method and key in XDS_SECTIONS:
                raise self.error(path, f"{key} applies to a whole service, not per method")
            elif key in XDS_SECTIONS:
                raise self.error(path, f"{key} is set per service: write it under services.<name>.{key}")
            elif key == IDEMPOTENT:
                raise self.error(
                    path, "says one service's or method's calls are safe to repeat: set it there"
                )
            else:  # every key this layer may hold, the xDS-only sections (docs/xds.md) included
                top = ("timeout",) if where == ("defaults",) else ("timeout", IDEMPOTENT)
                nested = () if method or where == ("defaults",) else ("methods",)
                allowed = ", ".join((*top, *sections, *xds, *nested))
                raise self.error(path, f"unknown key (expected one of: {allowed})")
        if CONSECUTIVE in flat and WINDOW_KEYS & flat.keys():
            mixed = ", ".join(sorted(key.split(".")[1] for key in WINDOW_KEYS & flat.keys()))
            raise self.error(flat[CONSECUTIVE].path, f"cannot be combined with {mixed}: choose one form")
        return flat

    @contextmanager
    def located(self, flat: Flat, where: tuple[str, ...], fields: Mapping[str, str]) -> Iterator[None]:
        """Re-raise a dataclass's FieldError as an error at the key path that caused it.

        Of the fields an error involves, blame the one written in this layer, else the one
        written anywhere below it, else the key as this layer would have written it.
        """
        try:
            yield
        except FieldError as error:
            keys = [fields[name] for name in (error.field, *error.related) if name in fields]
            here = [key for key in keys if key in flat and flat[key].layer == where]
            written = [key for key in keys if key in flat]
            key = (here or written or keys or [error.field])[0]
            reason = error.reason
            primary = keys[0] if keys else key
            if key != primary:  # blamed for breaking a rule that another key states
                other = (
                    flat[primary].path if primary in flat else f"{primary.split('.')[-1]} (built-in default)"
                )
                reason = f"conflicts with {other}, which {reason}"
            path = flat[key].path if key in flat else key_path((*where, *key.split(".")))
            raise self.error(path, reason) from None

    def build_call_parts(self, flat: Flat, where: tuple[str, ...]) -> tuple[float | None, RetryPolicy]:
        """The timeout (validated by CallPolicy) and the RetryPolicy of a merged layer."""
        values = {field: flat[key].value for field, key in _RETRY_FIELDS.items() if key in flat}
        values.setdefault("max_attempts", 1)  # retries are off unless the file turns them on
        backoff_fields = ("initial", "multiplier", "maximum")
        with self.located(flat, where, _RETRY_FIELDS):
            backoff = Backoff(**{name: values.pop(name) for name in backoff_fields if name in values})
            retry = RetryPolicy(backoff=backoff, **values)
        timeout = flat["timeout"].value if "timeout" in flat else None
        return timeout, retry

    def build_breaker(self, flat: Flat, where: tuple[str, ...]) -> BreakerConfig:
        """The BreakerConfig of a merged layer, in whichever form it was written."""
        values = {
            key[len("breaker.") :]: entry.value for key, entry in flat.items() if key.startswith("breaker.")
        }
        fields = {name: f"breaker.{name}" for name in SECTIONS["breaker"]}
        with self.located(flat, where, fields):
            if "consecutive_failures" in values:
                failures = values.pop("consecutive_failures")
                return BreakerConfig.consecutive(failures, **values)
            return BreakerConfig(**values)

    def build_budget(self, flat: Flat, where: tuple[str, ...]) -> BudgetConfig:
        """The BudgetConfig of a merged layer."""
        values = {
            key[len("budget.") :]: entry.value for key, entry in flat.items() if key.startswith("budget.")
        }
        with self.located(flat, where, {name: f"budget.{name}" for name in SECTIONS["budget"]}):
            return BudgetConfig(**values)

    def build_section(self, flat: Flat, where: tuple[str, ...], section: str, build: Callable[..., T]) -> T:
        """``build(**values)`` with the merged values of one xDS section, errors at their key."""
        prefix = f"{section}."
        values = {key[len(prefix) :]: entry.value for key, entry in flat.items() if key.startswith(prefix)}
        with self.located(flat, where, {name: f"{prefix}{name}" for name in XDS_SECTIONS[section]}):
            return build(**values)

    def _convert(self, kind: str, value: object, path: str) -> object:
        if kind == FLOAT:
            return _as_float(value)
        if kind == CODES:
            if isinstance(value, str):
                return [name.strip() for name in value.split(",") if name.strip()]
            if not isinstance(value, list):
                raise self.error(path, f"must be a list of status code names, got {value!r}")
        return value


def _as_float(value: object) -> object:
    """Integers written for float keys become floats; anything else is left to validation."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
