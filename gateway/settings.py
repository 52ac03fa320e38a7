"""The gateway's settings: one frozen object, read from the environment once in ``__main__``.

Every limit the gateway enforces lives here, validated when built, so a typo in a variable
fails the start (``ConfigError`` naming the variable) instead of surfacing as odd behaviour.

    GATEWAY_HOST / GATEWAY_PORT                listen address (127.0.0.1:8080)
    GATEWAY_UPSTREAM_<SERVICE>=host:port        upstream of each shop service (default ports)
    GATEWAY_PUBLIC_METHODS                      RPCs served without a token (full names, comma-separated)
    GATEWAY_DEFAULT_TIMEOUT_SECONDS             deadline when the client sends no Grpc-Timeout
    GATEWAY_MAX_TIMEOUT_SECONDS                 cap on a client's Grpc-Timeout
    GATEWAY_STREAM_TIMEOUT_SECONDS              default deadline of a server stream
    GATEWAY_MAX_BODY_BYTES / _MAX_JSON_DEPTH / _MAX_HEADER_BYTES / _MAX_PAGE_SIZE
    GATEWAY_RATE_LIMIT_PER_SECOND / _RATE_LIMIT_BURST   per-principal token bucket (0 disables)
    GATEWAY_RESPONSE_METADATA                   upstream metadata keys returned as headers
    GATEWAY_JWT_LEEWAY_SECONDS                  clock leeway for exp/nbf/iat (0.5 s)
    MESH_JWT_PUBLIC_KEY_FILE, MESH_JWT_KID, MESH_JWT_ISSUER, MESH_JWT_AUDIENCE,
    MESH_JWT_ALGORITHMS                         how tokens are verified (shared with the services)
    MESH_POLICY_FILE, MESH_POLICY__*            upstream timeouts, retries, breakers (the README)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mesh.config import env_float, env_int, env_list, env_str
from mesh.errors import ConfigError
from mesh.identity import JwtSettings, jwt_settings_from_env
from mesh.resilience import PolicySettings, policy_from_env
from mesh.telemetry.tracing import TracingSettings, tracing_settings_from_env

DEFAULT_UPSTREAMS: Mapping[str, str] = {
    "user": "127.0.0.1:50051",
    "order": "127.0.0.1:50052",
    "payment": "127.0.0.1:50053",
    "inventory": "127.0.0.1:50054",
    "shipping": "127.0.0.1:50055",
}

# The generated modules whose services the gateway serves; their http rules are the routes.
DEFAULT_PROTO_MODULES = (
    "shop.user.v1.user_pb2",
    "shop.order.v1.order_pb2",
    "shop.payment.v1.payment_pb2",
    "shop.inventory.v1.inventory_pb2",
    "shop.shipping.v1.shipping_pb2",
)

# Register, log in, and read the catalog: everything else needs a bearer token.
DEFAULT_PUBLIC_METHODS = (
    "shop.user.v1.UserService.CreateUser",
    "shop.user.v1.UserService.Login",
    "shop.inventory.v1.InventoryService.ListProducts",
    "shop.inventory.v1.InventoryService.GetProduct",
)


_SERVICE_KEY_FIELDS = ("service_public_key_pem", "service_private_key_pem")


@dataclass(frozen=True)
class Limits:
    """What one request may cost; every one is enforced before the upstream is called."""

    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    max_header_bytes: int = 16 * 1024
    max_page_size: int = 100
    rate_per_second: float = 50.0
    rate_burst: int = 100
    max_rate_keys: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_json_depth", "max_header_bytes", "max_page_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"GATEWAY_{name.upper()} must be >= 1, got {getattr(self, name)}")
        if self.rate_per_second < 0:
            raise ConfigError("GATEWAY_RATE_LIMIT_PER_SECOND must be >= 0 (0 disables the limit)")
        if self.rate_per_second > 0 and self.rate_burst < 1:
            raise ConfigError("GATEWAY_RATE_LIMIT_BURST must be >= 1")

    @property
    def rate_limited(self) -> bool:
        return self.rate_per_second > 0


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the gateway process needs; built once, passed down, never global."""

    host: str = "127.0.0.1"
    port: int = 8080
    upstreams: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_UPSTREAMS))
    proto_modules: tuple[str, ...] = DEFAULT_PROTO_MODULES
    public_methods: frozenset[str] = frozenset(DEFAULT_PUBLIC_METHODS)
    jwt: JwtSettings = field(default_factory=JwtSettings)
    limits: Limits = field(default_factory=Limits)
    default_timeout_seconds: float = 10.0
    max_timeout_seconds: float = 60.0
    stream_timeout_seconds: float = 300.0
    response_metadata: frozenset[str] = frozenset()
    keepalive_seconds: float = 75.0
    grace_seconds: float = 10.0
    realm: str = "tsunagu"
    log_level: str = "INFO"
    # Consul's HTTP address: upstream endpoints come from its catalog; empty means the static
    # GATEWAY_UPSTREAM_* targets (still through mesh channels).
    consul_address: str = ""
    # Timeouts, retries, breakers and budgets of upstream calls (MESH_POLICY_FILE + overrides).
    policy: PolicySettings = field(default_factory=PolicySettings)
    # Spans of upstream calls (OTEL_* as every service reads them); off unless configured.
    tracing: TracingSettings = field(default_factory=TracingSettings)

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"GATEWAY_PORT must be within 0..65535, got {self.port}")
        for target in self.upstreams.values():
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"GATEWAY_UPSTREAM_* must be host:port, got {target!r}")
        for name in ("default_timeout_seconds", "max_timeout_seconds", "stream_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"GATEWAY_{name.upper()} must be > 0")
        if self.default_timeout_seconds > self.max_timeout_seconds:
            raise ConfigError("GATEWAY_DEFAULT_TIMEOUT_SECONDS must not exceed GATEWAY_MAX_TIMEOUT_SECONDS")
        if self.jwt.leeway_seconds < 0 or self.jwt.leeway_seconds > 60:
            raise ConfigError("GATEWAY_JWT_LEEWAY_SECONDS must be within 0..60")
        for key in self.response_metadata:
            if key != key.lower() or key.startswith("grpc-") or key == "authorization":
                raise ConfigError(f"GATEWAY_RESPONSE_METADATA: {key!r} is not a returnable key")


def settings_from_env(environ: Mapping[str, str]) -> GatewaySettings:
    """Build :class:`GatewaySettings` from ``GATEWAY_*`` (and the shared ``MESH_JWT_*``)."""
    upstreams = {
        name: env_str(environ, f"GATEWAY_UPSTREAM_{name.upper()}", default)
        for name, default in DEFAULT_UPSTREAMS.items()
    }
    jwt = jwt_settings_from_env(environ)
    algorithms = env_list(environ, "MESH_JWT_ALGORITHMS") or jwt.algorithms
    jwt = replace(
        jwt,
        algorithms=algorithms,
        private_key_pem="",  # the gateway verifies; it never signs
        leeway_seconds=env_float(environ, "GATEWAY_JWT_LEEWAY_SECONDS", 0.5),
    )
    # Service-to-service tokens are for calls inside the mesh: the edge never accepts one.
    blank: dict[str, Any] = {name: "" for name in _SERVICE_KEY_FIELDS if hasattr(jwt, name)}
    jwt = replace(jwt, **blank)
    limits = Limits(
        max_body_bytes=env_int(environ, "GATEWAY_MAX_BODY_BYTES", Limits.max_body_bytes),
        max_json_depth=env_int(environ, "GATEWAY_MAX_JSON_DEPTH", Limits.max_json_depth),
        max_header_bytes=env_int(environ, "GATEWAY_MAX_HEADER_BYTES", Limits.max_header_bytes),
        max_page_size=env_int(environ, "GATEWAY_MAX_PAGE_SIZE", Limits.max_page_size),
        rate_per_second=env_float(environ, "GATEWAY_RATE_LIMIT_PER_SECOND", Limits.rate_per_second),
        rate_burst=env_int(environ, "GATEWAY_RATE_LIMIT_BURST", Limits.rate_burst),
    )
    return GatewaySettings(
        host=env_str(environ, "GATEWAY_HOST", "127.0.0.1"),
        port=env_int(environ, "GATEWAY_PORT", 8080),
        upstreams=upstreams,
        proto_modules=env_list(environ, "GATEWAY_PROTO_MODULES") or DEFAULT_PROTO_MODULES,
        public_methods=frozenset(env_list(environ, "GATEWAY_PUBLIC_METHODS") or DEFAULT_PUBLIC_METHODS),
        jwt=jwt,
        limits=limits,
        default_timeout_seconds=env_float(environ, "GATEWAY_DEFAULT_TIMEOUT_SECONDS", 10.0),
        max_timeout_seconds=env_float(environ, "GATEWAY_MAX_TIMEOUT_SECONDS", 60.0),
        stream_timeout_seconds=env_float(environ, "GATEWAY_STREAM_TIMEOUT_SECONDS", 300.0),
        response_metadata=frozenset(k.lower() for k in env_list(environ, "GATEWAY_RESPONSE_METADATA")),
        consul_address=env_str(environ, "CONSUL_HTTP_ADDR", ""),
        policy=policy_from_env(environ),
        tracing=tracing_settings_from_env(environ, "gateway"),
        keepalive_seconds=env_float(environ, "GATEWAY_KEEPALIVE_SECONDS", 75.0),
        grace_seconds=env_float(environ, "GATEWAY_GRACE_SECONDS", 10.0),
        log_level=env_str(environ, "GATEWAY_LOG_LEVEL", env_str(environ, "MESH_LOG_LEVEL", "INFO")),
    )
