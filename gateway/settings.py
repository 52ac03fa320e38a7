"""The gateway's settings: one frozen object, read from the environment once in ``__main__``.

Every limit the gateway enforces lives here, validated when built, so a typo in a variable
fails the start (``ConfigError`` naming the variable) instead of surfacing as odd behaviour.

    GATEWAY_HOST / GATEWAY_PORT                listen address (127.0.0.1:8080)
    GATEWAY_TLS_CERT_FILE / GATEWAY_TLS_KEY_FILE   HTTPS on that listener from these PEM files
                                                (both or neither; HTTP when neither is set)
    GATEWAY_METRICS_PORT                        /metrics listener on GATEWAY_HOST (0: a free port,
                                                published in Consul meta as metrics_port)
    GATEWAY_ADVERTISE_HOST                      address registered in Consul (default GATEWAY_HOST)
    CONSUL_HTTP_ADDR                            Consul agent: upstreams from its catalog, and the
                                                gateway registers itself as service "gateway"
    MESH_CONSUL_STALE                           1: read upstreams from Consul with stale consistency
                                                (any server answers; a cluster without a leader
                                                still serves the last known endpoints); 0, the
                                                default: the leader answers every read
    GATEWAY_HEADER_TIMEOUT_SECONDS              a request head must arrive within this (10 s), 408
    GATEWAY_MAX_CONNECTIONS                     open connections at most (1024); past it idle
                                                ones are reclaimed, else 503
    GATEWAY_KEEPALIVE_SECONDS / _GRACE_SECONDS  idle keep-alive close (75 s); drain on stop (10 s)
    GATEWAY_UPSTREAM_<SERVICE>=host:port        upstream of each shop service (default ports)
    GATEWAY_PUBLIC_METHODS                      RPCs served without a token (full names, comma-separated)
    GATEWAY_DEFAULT_TIMEOUT_SECONDS             deadline when the client sends no Grpc-Timeout
    GATEWAY_MAX_TIMEOUT_SECONDS                 cap on a client's Grpc-Timeout
    GATEWAY_STREAM_TIMEOUT_SECONDS              default deadline of a server stream
    GATEWAY_MAX_BODY_BYTES / _MAX_JSON_DEPTH / _MAX_HEADER_BYTES / _MAX_PAGE_SIZE
    GATEWAY_RATE_LIMIT_PER_SECOND / _RATE_LIMIT_BURST   per-principal token bucket (0 disables)
    GATEWAY_RESPONSE_METADATA                   upstream metadata keys returned as headers
    MESH_JWT_PUBLIC_KEY_FILE, MESH_JWT_KID, MESH_JWT_ISSUER, MESH_JWT_AUDIENCE,
    MESH_JWT_ALGORITHMS, MESH_JWT_LEEWAY_SECONDS,
    MESH_JWT_MAX_LIFETIME_SECONDS               how tokens are verified: the same rules and the
                                                same leeway as the services (mesh/verifier.py)
    MESH_INSECURE, CONSUL_HTTP_TOKEN(_FILE)     the gateway's mesh identity (mesh/connect/settings.py):
                                                services believe the client address it forwards
                                                (login throttling per client) from that identity
    MESH_POLICY_FILE, MESH_POLICY__*            upstream timeouts, retries, breakers (the README),
                                                over the gateway's built-in read policy below

Built-in read policy: every unary method bound to an HTTP GET rule is a read, safe to repeat,
so it gets ``idempotent = true`` and :data:`READ_RETRY` (1 s per attempt, 3 attempts,
UNAVAILABLE and DEADLINE_EXCEEDED retried): a hung upstream instance costs a read one short
attempt, not its whole deadline. Any key the operator's policy file or ``MESH_POLICY__*``
sets, at any layer, wins over it (``[defaults.retry] max_attempts = 1`` turns it off).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.rules import RuleError, bindings_of_files, load_files, upstream_of
from mesh.config import env_float, env_int, env_list, env_str
from mesh.connect.settings import SecuritySettings, security_settings_from_env
from mesh.errors import ConfigError
from mesh.identity import JwtSettings, jwt_settings_from_env
from mesh.registry import consul_stale_from_env
from mesh.resilience import PolicySettings, policy_from_env
from mesh.tracing.setup import TracingSettings, tracing_settings_from_env

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

# What a read behind a GET route gets unless the operator's policy says otherwise.
READ_RETRY: Mapping[str, Any] = {
    "max_attempts": 3,
    "per_attempt_timeout": 1.0,
    "retryable_codes": ["UNAVAILABLE", "DEADLINE_EXCEEDED"],
}

# Register, log in, and read the catalog: everything else needs a bearer token.
DEFAULT_PUBLIC_METHODS = (
    "shop.user.v1.UserService.CreateUser",
    "shop.user.v1.UserService.Login",
    "shop.inventory.v1.InventoryService.ListProducts",
    "shop.inventory.v1.InventoryService.GetProduct",
)


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
    # A request head (request line and headers) must be complete this long after its first
    # byte; a connection that starts no request in this time is closed (slow clients).
    header_timeout_seconds: float = 10.0
    # Open connections at most; past it the longest-idle one is reclaimed, else 503.
    max_connections: int = 1024
    # /metrics on its own listener, bound to ``host`` as the services bind theirs; 0 binds a
    # free port, published in the Consul registration as meta ``metrics_port``.
    metrics_port: int = 0
    # The address registered in Consul (and checked by it); ``host`` unless told otherwise.
    advertise_host: str = ""
    realm: str = "tsunagu"
    log_level: str = "INFO"
    # Consul's HTTP address: upstream endpoints come from its catalog; empty means the static
    # GATEWAY_UPSTREAM_* targets (still through mesh channels).
    consul_address: str = ""
    # MESH_CONSUL_STALE=1: upstream endpoints come from stale Consul reads (see ConsulDiscovery).
    consul_stale: bool = False
    # Timeouts, retries, breakers and budgets of upstream calls (MESH_POLICY_FILE + overrides).
    policy: PolicySettings = field(default_factory=PolicySettings)
    # Spans of upstream calls (OTEL_* as every service reads them); off unless configured.
    tracing: TracingSettings = field(default_factory=TracingSettings)
    # The gateway's mesh identity: mTLS from Consul Connect, or the loud MESH_INSECURE=1 switch.
    security: SecuritySettings = field(default_factory=SecuritySettings)
    # HTTPS at the edge: PEM certificate (chain) and private key files; both empty means HTTP.
    tls_cert_file: str = ""
    tls_key_file: str = ""

    def __post_init__(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            missing = "GATEWAY_TLS_KEY_FILE" if self.tls_cert_file else "GATEWAY_TLS_CERT_FILE"
            raise ConfigError(
                f"{missing} must be set too: HTTPS needs both GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"GATEWAY_PORT must be within 0..65535, got {self.port}")
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"GATEWAY_METRICS_PORT must be within 0..65535, got {self.metrics_port}")
        if self.metrics_port and self.metrics_port == self.port:
            raise ConfigError("GATEWAY_METRICS_PORT must differ from GATEWAY_PORT")
        for name in ("keepalive_seconds", "header_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"GATEWAY_{name.upper()} must be > 0")
        if self.max_connections < 1:
            raise ConfigError(f"GATEWAY_MAX_CONNECTIONS must be >= 1, got {self.max_connections}")
        if self.consul_address and self.address in ("0.0.0.0", "::", ""):
            raise ConfigError(
                "GATEWAY_ADVERTISE_HOST must name this host's address when GATEWAY_HOST is a "
                "wildcard and CONSUL_HTTP_ADDR is set (Consul would publish an unreachable address)"
            )
        for target in self.upstreams.values():
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"GATEWAY_UPSTREAM_* must be host:port, got {target!r}")
        for name in ("default_timeout_seconds", "max_timeout_seconds", "stream_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"GATEWAY_{name.upper()} must be > 0")
        if self.default_timeout_seconds > self.max_timeout_seconds:
            raise ConfigError("GATEWAY_DEFAULT_TIMEOUT_SECONDS must not exceed GATEWAY_MAX_TIMEOUT_SECONDS")
        for key in self.response_metadata:
            if key != key.lower() or key.startswith("grpc-") or key == "authorization":
                raise ConfigError(f"GATEWAY_RESPONSE_METADATA: {key!r} is not a returnable key")

    @property
    def address(self) -> str:
        """The host other processes (Consul's check, Prometheus) should dial."""
        return self.advertise_host or self.host

    @property
    def https(self) -> bool:
        return bool(self.tls_cert_file)


def edge_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The server-side TLS context of the HTTPS listener (TLS 1.2 or later, HTTP/1.1 by ALPN).

    ConfigError naming the variable whose file is missing, unreadable or not PEM of its kind,
    or naming both when the key is not the certificate's.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    cert_pem = _read_pem("GATEWAY_TLS_CERT_FILE", cert_file)
    key_pem = _read_pem("GATEWAY_TLS_KEY_FILE", key_file)
    try:
        x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError(f"GATEWAY_TLS_CERT_FILE: {cert_file} holds no PEM certificate") from None
    try:
        load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"GATEWAY_TLS_KEY_FILE: {key_file} holds no unencrypted PEM private key") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as error:
        raise ConfigError(
            f"GATEWAY_TLS_KEY_FILE does not match GATEWAY_TLS_CERT_FILE ({key_file}, {cert_file}): "
            f"{error.reason or error}"
        ) from None
    return context


def _read_pem(variable: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise ConfigError(f"{variable}: cannot read {path}: {error.strerror}") from None


def read_policy(proto_modules: tuple[str, ...]) -> dict[str, Any]:
    """The built-in policy tree: each unary method bound to an HTTP GET rule, by full path,
    is ``idempotent`` with :data:`READ_RETRY` (a server stream keeps the time left)."""
    try:
        bindings = list(bindings_of_files(load_files(proto_modules)))
    except RuleError as error:
        raise ConfigError(str(error)) from None
    services: dict[str, dict[str, Any]] = {}
    for binding in bindings:
        if binding.http_method == "GET" and not binding.server_streaming:
            methods = services.setdefault(upstream_of(binding), {"methods": {}})["methods"]
            methods[binding.grpc_path] = {"idempotent": True, "retry": dict(READ_RETRY)}
    return {"services": services}


def settings_from_env(environ: Mapping[str, str]) -> GatewaySettings:
    """Build :class:`GatewaySettings` from ``GATEWAY_*`` (and the shared ``MESH_JWT_*``)."""
    upstreams = {
        name: env_str(environ, f"GATEWAY_UPSTREAM_{name.upper()}", default)
        for name, default in DEFAULT_UPSTREAMS.items()
    }
    jwt = jwt_settings_from_env(environ)
    algorithms = env_list(environ, "MESH_JWT_ALGORITHMS") or jwt.algorithms
    if "GATEWAY_JWT_LEEWAY_SECONDS" in environ:
        # One leeway for the edge and the services, or a token valid at one is refused by the other.
        raise ConfigError("GATEWAY_JWT_LEEWAY_SECONDS is gone: set MESH_JWT_LEEWAY_SECONDS (shared)")
    jwt = replace(jwt, algorithms=algorithms, private_key_pem="")  # no user tokens signed here
    limits = Limits(
        max_body_bytes=env_int(environ, "GATEWAY_MAX_BODY_BYTES", Limits.max_body_bytes),
        max_json_depth=env_int(environ, "GATEWAY_MAX_JSON_DEPTH", Limits.max_json_depth),
        max_header_bytes=env_int(environ, "GATEWAY_MAX_HEADER_BYTES", Limits.max_header_bytes),
        max_page_size=env_int(environ, "GATEWAY_MAX_PAGE_SIZE", Limits.max_page_size),
        rate_per_second=env_float(environ, "GATEWAY_RATE_LIMIT_PER_SECOND", Limits.rate_per_second),
        rate_burst=env_int(environ, "GATEWAY_RATE_LIMIT_BURST", Limits.rate_burst),
    )
    proto_modules = env_list(environ, "GATEWAY_PROTO_MODULES") or DEFAULT_PROTO_MODULES
    return GatewaySettings(
        host=env_str(environ, "GATEWAY_HOST", "127.0.0.1"),
        port=env_int(environ, "GATEWAY_PORT", 8080),
        upstreams=upstreams,
        proto_modules=proto_modules,
        public_methods=frozenset(env_list(environ, "GATEWAY_PUBLIC_METHODS") or DEFAULT_PUBLIC_METHODS),
        jwt=jwt,
        limits=limits,
        default_timeout_seconds=env_float(environ, "GATEWAY_DEFAULT_TIMEOUT_SECONDS", 10.0),
        max_timeout_seconds=env_float(environ, "GATEWAY_MAX_TIMEOUT_SECONDS", 60.0),
        stream_timeout_seconds=env_float(environ, "GATEWAY_STREAM_TIMEOUT_SECONDS", 300.0),
        response_metadata=frozenset(k.lower() for k in env_list(environ, "GATEWAY_RESPONSE_METADATA")),
        consul_address=env_str(environ, "CONSUL_HTTP_ADDR", ""),
        consul_stale=consul_stale_from_env(environ),
        policy=policy_from_env(environ, builtin=read_policy(proto_modules)),
        tracing=tracing_settings_from_env(environ, "gateway"),
        keepalive_seconds=env_float(environ, "GATEWAY_KEEPALIVE_SECONDS", 75.0),
        grace_seconds=env_float(environ, "GATEWAY_GRACE_SECONDS", 10.0),
        header_timeout_seconds=env_float(environ, "GATEWAY_HEADER_TIMEOUT_SECONDS", 10.0),
        max_connections=env_int(environ, "GATEWAY_MAX_CONNECTIONS", 1024),
        metrics_port=env_int(environ, "GATEWAY_METRICS_PORT", 0),
        advertise_host=env_str(environ, "GATEWAY_ADVERTISE_HOST", ""),
        log_level=env_str(environ, "GATEWAY_LOG_LEVEL", env_str(environ, "MESH_LOG_LEVEL", "INFO")),
        security=security_settings_from_env(environ),
        tls_cert_file=env_str(environ, "GATEWAY_TLS_CERT_FILE", ""),
        tls_key_file=env_str(environ, "GATEWAY_TLS_KEY_FILE", ""),
    )
