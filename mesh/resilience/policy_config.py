"""Call policy per target service and method: one TOML file plus environment overrides.

Why one file validated at load: a typo in ``max_attempts`` should stop the process at start
with the key's path, not show up weeks later as a retry storm. Every service and method in
the file is built into frozen policy objects up front; lookups afterwards cannot fail.

The file (every key optional; built-in defaults in brackets)::

    [defaults]
    timeout = 5.0                       # seconds, when the caller sets no deadline [none]

    [defaults.retry]
    max_attempts = 3                    # 1..5, first attempt included [1: no retries]
    retryable_codes = ["UNAVAILABLE"]   # grpc.StatusCode names [UNAVAILABLE]
    initial_backoff = 0.1               # full-jitter exponential backoff [0.1, 2.0, 2.0]
    backoff_multiplier = 2.0
    max_backoff = 2.0
    per_attempt_timeout = 1.0           # [none: each attempt gets the time left]

    [defaults.breaker]                  # sliding window, resilience4j's defaults
    window_size = 100
    minimum_calls = 100
    failure_rate_threshold = 50.0       # percent
    slow_call_duration = 60.0           # seconds
    slow_call_rate_threshold = 100.0    # percent
    open_wait = 60.0                    # seconds
    half_open_permits = 10
    failure_codes = ["UNAVAILABLE", "DEADLINE_EXCEEDED", "INTERNAL", "UNKNOWN"]
    ignored_codes = ["RESOURCE_EXHAUSTED", "INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS",
                     "FAILED_PRECONDITION", "PERMISSION_DENIED", "UNAUTHENTICATED"]
    # or the simple form instead of the window keys:  consecutive_failures = 5

    [defaults.budget]                   # retry budget per target service (Linkerd's)
    ratio = 0.2
    min_retries_per_second = 10.0
    ttl = 10.0

    [services.payment]                  # same keys as [defaults], for calls to "payment"
    timeout = 2.0
    idempotent = true                   # service or method only: its calls are safe to repeat
                                        # [none: the proto's idempotency_level decides]
    [services.payment.breaker]
    consecutive_failures = 5
    [services.payment.methods.Capture.retry]   # a method: timeout and retry only
    max_attempts = 1

    [services.inventory.balancer]       # read by ``mesh xds`` only (docs/xds.md), not the channel
    kind = "ring_hash"                  # p2c | p2c_ewma | round_robin | ring_hash |
                                        # weighted_round_robin | least_request [p2c]
    hash_header = "x-user-id"           # ring_hash only, and required by it
    [services.inventory.fault]          # gRFC A33 faults ``mesh xds`` asks grpc clients to inject
    abort_percent = 10.0                # of calls failed at once with abort_code [0]
    abort_code = "UNAVAILABLE"          # a status code name other than OK [UNAVAILABLE]
    delay_percent = 50.0                # of calls held back delay_seconds first [0]
    delay_seconds = 0.5                 # required when delay_percent > 0

Precedence is per key: method > service > defaults > built-in. A layer that sets
``consecutive_failures`` replaces the window keys below it, and the other way round. A
method is named bare (``Capture``) or by full path (``"/shop.payment.v1.PaymentService/Capture"``).
Breakers and budgets exist per endpoint and per service, so a method cannot set them.
``balancer`` (also in [defaults]) and ``fault`` (a service only) are whole sections: a
layer that writes one replaces the section below it rather than merging key by key.

``idempotent = true`` says a method's (or every method of a service's) calls are safe to
send again, so its retries and per-attempt timeouts can act on a method whose proto sets
no ``idempotency_level``; ``false`` forbids repeating even what the proto marks (a request
with an idempotency key may always repeat). [defaults] cannot set it.

A program may bring its own defaults (``builtin``, a tree in the file's format: the
gateway's for its GET routes, the order service's for its saga steps). They sit below the
whole file: a key the file or the environment sets at *any* layer wins over every built-in
layer, so ``[defaults.retry] max_attempts = 1`` turns built-in retries off everywhere.
Below that, the built-in tree's own layers follow the same per-key order.

Environment overrides (``MESH_POLICY__payment__retry__max_attempts=3``) are described in
:mod:`mesh.resilience.policy_env`; ``MESH_POLICY_FILE`` names the file for
:func:`policy_from_env`. Errors name the key path: ``services.payment.retry.max_attempts:
must be between 1 and 5, got 9``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mesh.errors import ConfigError
from mesh.resilience.breaker_config import BreakerConfig
from mesh.resilience.budget import BudgetConfig
from mesh.resilience.codes import code_names
from mesh.resilience.policy_env import apply_env, key_path
from mesh.resilience.policy_layers import IDEMPOTENT, Entry, Flat, LayerLoader, overlay
from mesh.resilience.retry import RetryPolicy
from mesh.resilience.validate import FieldError, require_number, require_positive

FILE_VARIABLE = "MESH_POLICY_FILE"
NO_RETRIES = RetryPolicy(max_attempts=1)  # the default: retries only where configured


@dataclass(frozen=True)
class CallPolicy:
    """What one call uses: its default timeout (None: the caller's own), its retries, and
    whether it is safe to repeat (None: as its proto's ``idempotency_level`` says)."""

    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=lambda: NO_RETRIES)
    idempotent: bool | None = None

    def __post_init__(self) -> None:
        if self.timeout is not None:
            require_positive("timeout", self.timeout)


BALANCER_KINDS = ("p2c", "p2c_ewma", "round_robin", "ring_hash", "weighted_round_robin", "least_request")
RING_HASH = "ring_hash"
# A gRPC metadata key a client can hash on: lower case, not binary (``-bin`` values are never
# hashed), not a pseudo-header, not one of gRPC's reserved ``grpc-`` keys.
_HASH_HEADER = re.compile(r"[a-z0-9_.-]+")


@dataclass(frozen=True)
class BalancerConfig:
    """How ``mesh xds`` tells grpc clients to balance over a service's endpoints.

    Only the control plane reads it; the mesh channel keeps the balancer its program
    chose. ``hash_header`` names the request header ``ring_hash`` hashes on, so calls
    carrying the same value keep reaching the same endpoint while the set is stable.
    """

    kind: str = "p2c"
    hash_header: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in BALANCER_KINDS:
            raise FieldError("kind", f"must be one of {', '.join(BALANCER_KINDS)}, got {self.kind!r}")
        if self.kind == RING_HASH and self.hash_header is None:
            raise FieldError("hash_header", "is required when kind is ring_hash (the header to hash on)")
        if self.hash_header is None:
            return
        if self.kind != RING_HASH:
            raise FieldError("hash_header", f"is read only when kind is ring_hash, not {self.kind}")
        header = self.hash_header
        if not isinstance(header, str) or not _HASH_HEADER.fullmatch(header):
            raise FieldError("hash_header", f"must be a lower-case metadata key, got {header!r}")
        if header.endswith("-bin") or header.startswith("grpc-"):
            raise FieldError("hash_header", f"cannot hash a binary or grpc- header, got {header!r}")


@dataclass(frozen=True)
class FaultConfig:
    """Faults grpc clients inject into calls to one service (gRFC A33), for chaos tests.

    ``abort_percent`` of calls fail at once with ``abort_code``; ``delay_percent`` of calls
    wait ``delay_seconds`` before being sent. Percentages are 0..100; 0 turns a fault off.
    Only ``mesh xds`` reads it: the mesh channel never injects faults.
    """

    abort_percent: float = 0.0
    abort_code: str = "UNAVAILABLE"
    delay_percent: float = 0.0
    delay_seconds: float | None = None

    def __post_init__(self) -> None:
        for name in ("abort_percent", "delay_percent"):
            value = require_number(name, getattr(self, name))
            if not 0 <= value <= 100:
                raise FieldError(name, f"must be within 0..100, got {getattr(self, name)}")
        if not isinstance(self.abort_code, str) or self.abort_code.strip().upper() == "OK":
            raise FieldError("abort_code", f"must name an error status code, got {self.abort_code!r}")
        (code,) = code_names("abort_code", [self.abort_code])
        object.__setattr__(self, "abort_code", code)
        if self.delay_seconds is not None:
            require_positive("delay_seconds", self.delay_seconds)
            if self.delay_percent == 0:
                raise FieldError("delay_percent", "must be > 0 for delay_seconds to apply")
        elif self.delay_percent > 0:
            raise FieldError("delay_seconds", "is required when delay_percent > 0")

    @property
    def active(self) -> bool:
        """Whether any call is to be aborted or delayed at all."""
        return self.abort_percent > 0 or self.delay_percent > 0


@dataclass(frozen=True)
class ServicePolicy:
    """Everything about calls to one target service; ``call`` applies to unlisted methods.

    ``balancer`` and ``fault`` are read only by the xDS control plane (``mesh xds``).
    """

    call: CallPolicy = field(default_factory=CallPolicy)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    methods: Mapping[str, CallPolicy] = field(default_factory=lambda: MappingProxyType({}))
    balancer: BalancerConfig = field(default_factory=BalancerConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)

    def for_method(self, method: str) -> CallPolicy:
        """The policy of ``method`` (full path or bare name), else the service's."""
        policy = self.methods.get(method)
        if policy is None and "/" in method:
            policy = self.methods.get(method.rsplit("/", 1)[1])
        return policy or self.call


@dataclass(frozen=True)
class PolicySettings:
    """The whole policy file, resolved: defaults plus every listed service."""

    defaults: ServicePolicy = field(default_factory=ServicePolicy)
    services: Mapping[str, ServicePolicy] = field(default_factory=lambda: MappingProxyType({}))

    def service(self, name: str) -> ServicePolicy:
        """The policy of calls to ``name``; the defaults for a service the file does not list."""
        return self.services.get(name, self.defaults)


def parse_policy(
    data: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    *,
    builtin: Mapping[str, Any] | None = None,
) -> PolicySettings:
    """Validate a parsed policy tree plus ``MESH_POLICY__`` overrides; ConfigError names the key.

    ``builtin`` is a program's own default tree, in the file's format: every key the file or
    the environment sets, at any layer, wins over it (see the module's docstring).
    """
    tree, origins = apply_env(data, environ or {})
    loader = LayerLoader(origins)
    own_defaults, own_services = _read_tree(loader, tree)
    base_defaults, base_services = _read_tree(LayerLoader({}, "built-in policy: "), builtin or {})
    defaults = _build_service(loader, overlay(base_defaults, own_defaults), ("defaults",), {})
    services: dict[str, ServicePolicy] = {}
    for name in {**base_services, **own_services}:
        where = ("services", name)
        own_layer, own_methods = own_services.get(name, ({}, {}))
        base_layer, base_methods = base_services.get(name, ({}, {}))
        own_flat = overlay(own_defaults, own_layer)
        base_flat = overlay(base_defaults, base_layer)
        methods: dict[str, CallPolicy] = {}
        for method in {**base_methods, **own_methods}:
            merged = overlay(
                overlay(base_flat, _method_layer(base_methods, method)),
                overlay(own_flat, _method_layer(own_methods, method)),
            )
            methods[method] = _build_call(loader, merged, (*where, "methods", method))
        services[name] = _build_service(loader, overlay(base_flat, own_flat), where, methods)
    return PolicySettings(defaults, MappingProxyType(services))


Layer = dict[str, Entry]
Tree = tuple[Layer, dict[str, tuple[Layer, dict[str, Layer]]]]


def _read_tree(loader: LayerLoader, tree: Mapping[str, Any]) -> Tree:
    """Every layer of one tree, read and checked but not merged: (defaults, {service: …})."""
    for key in tree:
        if key not in ("defaults", "services"):
            raise loader.error(key_path([key]), "unknown key (expected one of: defaults, services)")
    defaults = loader.layer(loader.table(tree.get("defaults", {}), "defaults"), ("defaults",), method=False)
    services: dict[str, tuple[Layer, dict[str, Layer]]] = {}
    for name, raw in loader.table(tree.get("services", {}), "services").items():
        where = ("services", name)
        table = dict(loader.table(raw, key_path(where)))
        raw_methods = loader.table(table.pop("methods", {}), key_path((*where, "methods")))
        methods: dict[str, Layer] = {}
        for method, raw_method in raw_methods.items():
            method_where = (*where, "methods", method)
            loader.check_method_name(method, method_where)
            method_table = loader.table(raw_method, key_path(method_where))
            methods[method] = loader.layer(method_table, method_where, method=True)
        services[name] = (loader.layer(table, where, method=False), methods)
    return defaults, services


def _method_layer(methods: Mapping[str, Layer], method: str) -> Layer:
    """The layer written for ``method``: under its own name, else (a full path) its bare name."""
    if method in methods:
        return methods[method]
    return methods.get(method.rsplit("/", 1)[1], {}) if "/" in method else {}


def load_policy(
    path: str | os.PathLike[str] | None,
    environ: Mapping[str, str],
    *,
    builtin: Mapping[str, Any] | None = None,
) -> PolicySettings:
    """Read the TOML file at ``path`` (None: no file, defaults only) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except OSError as error:
            raise ConfigError(f"policy file {os.fspath(path)!s}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"policy file {os.fspath(path)!s}: {error}") from None
    return parse_policy(data, environ, builtin=builtin)


def policy_from_env(
    environ: Mapping[str, str], *, builtin: Mapping[str, Any] | None = None
) -> PolicySettings:
    """The policy named by ``MESH_POLICY_FILE`` (if set) with the environment's overrides,
    over the program's ``builtin`` defaults (a tree in the file's format) if it has any."""
    path = environ.get(FILE_VARIABLE, "").strip()
    return load_policy(path or None, environ, builtin=builtin)


def _build_call(loader: LayerLoader, flat: Flat, where: tuple[str, ...]) -> CallPolicy:
    timeout, retry = loader.build_call_parts(flat, where)
    idempotent = flat[IDEMPOTENT].value if IDEMPOTENT in flat else None
    with loader.located(flat, where, {"timeout": "timeout"}):
        return CallPolicy(timeout, retry, idempotent)


def _build_service(
    loader: LayerLoader, flat: Flat, where: tuple[str, ...], methods: dict[str, CallPolicy]
) -> ServicePolicy:
    call = _build_call(loader, flat, where)
    breaker, budget = loader.build_breaker(flat, where), loader.build_budget(flat, where)
    balancer = loader.build_section(flat, where, "balancer", BalancerConfig)
    fault = loader.build_section(flat, where, "fault", FaultConfig)
    return ServicePolicy(call, breaker, budget, MappingProxyType(methods), balancer, fault)
