"""``mesh dashboard`` settings: one frozen object from the environment and the command line.

The environment is read once, here; a command-line option wins over its variable. Nothing
below this module reads ``os.environ``. Importing it costs nothing (no aiohttp, no gRPC), so
``mesh``'s other commands do not pay for the dashboard.

===================================  =====================  ===========================================
variable                             option                 meaning [default]
===================================  =====================  ===========================================
MESH_DASHBOARD_HOST                  --host                 bind host of the page and OTLP [127.0.0.1]
MESH_DASHBOARD_PORT                  --port                 HTTP port of the page, 0 = any free [0]
MESH_DASHBOARD_OTLP_PORT             --otlp-port            OTLP/gRPC trace receiver, 0 = any free [0]
MESH_DASHBOARD_INTERVAL_SECONDS      --interval             one sample (and one SSE event) per [1]
MESH_DASHBOARD_WINDOW_SECONDS        --window               rates and percentiles over [10]
MESH_DASHBOARD_SCRAPE_TIMEOUT        --scrape-timeout       one instance's /metrics within [2]
MESH_DASHBOARD_MAX_TRACES            --max-traces           traces kept, oldest evicted [200]
MESH_DASHBOARD_MAX_SPANS_PER_TRACE   --max-spans-per-trace  spans kept per trace, the rest counted [500]
MESH_DASHBOARD_REGISTER=1            --register             register as service ``dashboard`` in Consul [0]
MESH_DASHBOARD_ADVERTISE_HOST                               the address registered [the bind host]
CONSUL_HTTP_ADDR                     --consul               the agent [http://127.0.0.1:8500]
CONSUL_HTTP_TOKEN(_FILE)                                    token to read the catalog and health with
                                                            (and, with --register, write ``dashboard``)
MESH_LOG_LEVEL                                              [INFO]
===================================  =====================  ===========================================
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field

from mesh.config import env_str
from mesh.connect.settings import consul_token_from_env
from mesh.errors import ConfigError

DEFAULT_CONSUL = "http://127.0.0.1:8500"


@dataclass(frozen=True)
class DashboardSettings:
    """Everything ``mesh dashboard`` needs to run, validated."""

    host: str = "127.0.0.1"
    port: int = 0
    otlp_port: int = 0
    consul_address: str = DEFAULT_CONSUL
    consul_token: str = field(default="", repr=False)
    interval: float = 1.0
    window_seconds: float = 10.0
    scrape_timeout: float = 2.0
    max_traces: int = 200
    max_spans_per_trace: int = 500
    register: bool = False
    advertise_host: str = ""
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        for name, port in (("MESH_DASHBOARD_PORT", self.port), ("MESH_DASHBOARD_OTLP_PORT", self.otlp_port)):
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be within 0..65535, got {port}")
        if self.port and self.port == self.otlp_port:
            raise ConfigError("MESH_DASHBOARD_PORT and MESH_DASHBOARD_OTLP_PORT must differ")
        for name, seconds in (
            ("MESH_DASHBOARD_INTERVAL_SECONDS", self.interval),
            ("MESH_DASHBOARD_WINDOW_SECONDS", self.window_seconds),
            ("MESH_DASHBOARD_SCRAPE_TIMEOUT", self.scrape_timeout),
        ):
            if seconds <= 0:
                raise ConfigError(f"{name} must be > 0, got {seconds}")
        if self.max_traces < 1 or self.max_spans_per_trace < 1:
            raise ConfigError("MESH_DASHBOARD_MAX_TRACES and _MAX_SPANS_PER_TRACE must be >= 1")

    @property
    def address(self) -> str:
        """The address registered in Consul: the advertised host, else the bind host."""
        return self.advertise_host or self.host

    @property
    def sample_timeout(self) -> float:
        """How long one sample may take before it counts as failed (a hung Consul, say)."""
        return max(5.0, 2 * self.scrape_timeout + 1.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``mesh dashboard`` options (every default None: the environment decides then)."""
    parser.add_argument("--host", help="bind host of the page and the OTLP receiver [127.0.0.1]")
    parser.add_argument(
        "--port", type=int, help="HTTP port of the page, 0 = any free [$MESH_DASHBOARD_PORT, 0]"
    )
    parser.add_argument(
        "--otlp-port",
        type=int,
        help="OTLP/gRPC trace receiver port, 0 = any free [$MESH_DASHBOARD_OTLP_PORT, 0]",
    )
    parser.add_argument("--consul", help="the Consul agent [$CONSUL_HTTP_ADDR, http://127.0.0.1:8500]")
    parser.add_argument("--interval", type=float, help="seconds between samples and page updates [1]")
    parser.add_argument("--window", type=float, help="seconds the rates and percentiles are over [10]")
    parser.add_argument("--scrape-timeout", type=float, help="seconds one /metrics scrape may take [2]")
    parser.add_argument("--max-traces", type=int, help="traces kept in memory [200]")
    parser.add_argument("--max-spans-per-trace", type=int, help="spans kept per trace [500]")
    parser.add_argument(
        "--register",
        action="store_const",
        const="1",
        help="register as service 'dashboard' in Consul, checked on /healthz [$MESH_DASHBOARD_REGISTER]",
    )


def dashboard_settings(
    environ: Mapping[str, str], options: argparse.Namespace | None = None
) -> DashboardSettings:
    """Build the settings: ``options`` (from :func:`add_arguments`) over ``environ``."""

    def pick(name: str, variable: str, default: str) -> str:
        value = getattr(options, name, None) if options is not None else None
        return str(value) if value is not None else env_str(environ, variable, default)

    def number(name: str, variable: str, default: str, kind: type[int] | type[float]) -> float:
        raw = pick(name, variable, default)
        try:
            return kind(raw)
        except ValueError:
            raise ConfigError(f"{variable} must be a number, got {raw!r}") from None

    return DashboardSettings(
        host=pick("host", "MESH_DASHBOARD_HOST", "127.0.0.1"),
        port=int(number("port", "MESH_DASHBOARD_PORT", "0", int)),
        otlp_port=int(number("otlp_port", "MESH_DASHBOARD_OTLP_PORT", "0", int)),
        consul_address=pick("consul", "CONSUL_HTTP_ADDR", DEFAULT_CONSUL),
        consul_token=consul_token_from_env(environ),
        interval=number("interval", "MESH_DASHBOARD_INTERVAL_SECONDS", "1", float),
        window_seconds=number("window", "MESH_DASHBOARD_WINDOW_SECONDS", "10", float),
        scrape_timeout=number("scrape_timeout", "MESH_DASHBOARD_SCRAPE_TIMEOUT", "2", float),
        max_traces=int(number("max_traces", "MESH_DASHBOARD_MAX_TRACES", "200", int)),
        max_spans_per_trace=int(
            number("max_spans_per_trace", "MESH_DASHBOARD_MAX_SPANS_PER_TRACE", "500", int)
        ),
        register=_flag(pick("register", "MESH_DASHBOARD_REGISTER", "0"), "MESH_DASHBOARD_REGISTER"),
        advertise_host=env_str(environ, "MESH_DASHBOARD_ADVERTISE_HOST", ""),
        log_level=env_str(environ, "MESH_LOG_LEVEL", "INFO"),
    )


def _flag(raw: str, variable: str) -> bool:
    if raw not in ("0", "1"):
        raise ConfigError(f"{variable} must be 1 or 0, got {raw!r}")
    return raw == "1"
