"""``mesh xds`` settings: one frozen object from the environment and the command line.

The environment is read once, here; a command-line option wins over its variable. Nothing
below this module reads ``os.environ``. This module imports no Envoy protos, so ``mesh``'s
other commands do not pay for them.

===========================  ==========================  ======================================
variable                     option                      meaning [default]
===========================  ==========================  ======================================
MESH_XDS_HOST                --host                      ADS and admin bind host [127.0.0.1]
MESH_XDS_PORT                --port                      ADS port, 0 = any free [18000]
MESH_XDS_ADMIN_PORT          --admin-port                HTTP admin port, 0 = any free [0]
CONSUL_HTTP_ADDR             --consul                    the local agent [http://127.0.0.1:8500]
CONSUL_HTTP_TOKEN(_FILE)                                 this process's token (identity ``xds``:
                                                         service read on all, write on ``xds``)
MESH_CONSUL_STALE                                        1: stale blocking queries [0]
MESH_INSECURE                                            1: plaintext resources (no TLS) [0]
MESH_POLICY_FILE, MESH_POLICY__*                         call policy (retries, timeouts, ...)
MESH_XDS_BOOTSTRAP           --bootstrap-out PATH        write a gRPC xDS bootstrap there
MESH_XDS_NODE_ID             --node-id                   the bootstrap's node id [local-client]
MESH_XDS_CLIENT_IDENTITY     --client-identity NAME      keep NAME's certificate files for clients
MESH_XDS_CLIENT_TOKEN_FILE   --client-token-file PATH    NAME's ACL token (service:write on NAME)
MESH_XDS_CLIENT_CERTS        --client-certs DIR          where [.mesh-certs/NAME]
MESH_GRACE_SECONDS                                       drain on stop [2]
MESH_LOG_LEVEL                                           [INFO]
===========================  ==========================  ======================================
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mesh.config import env_float, env_int, env_str
from mesh.connect.settings import security_settings_from_env
from mesh.errors import ConfigError
from mesh.registry import consul_stale_from_env
from mesh.resilience.policy_config import PolicySettings, policy_from_env
from mesh.xds.bootstrap import DEFAULT_NODE_ID

DEFAULT_PORT = 18000
SERVICE_NAME = "xds"


@dataclass(frozen=True)
class XdsSettings:
    """Everything ``mesh xds`` needs to run, validated."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    admin_port: int = 0
    consul_address: str = "http://127.0.0.1:8500"
    consul_token: str = field(default="", repr=False)
    stale: bool = False
    insecure: bool = False
    policy: PolicySettings = field(default_factory=PolicySettings)
    bootstrap_out: Path | None = None
    node_id: str = DEFAULT_NODE_ID
    client_identity: str = ""
    client_token: str = field(default="", repr=False)
    client_certs: Path | None = None
    grace_seconds: float = 2.0
    log_level: str = "INFO"
    consul_wait: float = 30.0

    def __post_init__(self) -> None:
        for name, port in (("MESH_XDS_PORT", self.port), ("MESH_XDS_ADMIN_PORT", self.admin_port)):
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be within 0..65535, got {port}")
        if self.grace_seconds < 0:
            raise ConfigError(f"MESH_GRACE_SECONDS must be >= 0, got {self.grace_seconds}")
        if self.consul_wait <= 0:
            raise ConfigError(f"MESH_XDS_CONSUL_WAIT must be > 0, got {self.consul_wait}")
        if self.client_certs is not None and not self.client_identity:
            raise ConfigError("--client-certs needs --client-identity NAME (whose certificate to keep)")

    @property
    def certificates_dir(self) -> Path | None:
        """Where the client certificate files go, when a client identity is configured."""
        if not self.client_identity:
            return None
        return self.client_certs or Path(".mesh-certs") / self.client_identity


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``mesh xds`` options (every default None: the environment decides then)."""
    parser.add_argument("--host", help="bind host of the ADS and admin ports [$MESH_XDS_HOST, 127.0.0.1]")
    parser.add_argument("--port", type=int, help="ADS port, 0 = any free [$MESH_XDS_PORT, 18000]")
    parser.add_argument(
        "--admin-port", type=int, help="HTTP admin port, 0 = any free [$MESH_XDS_ADMIN_PORT, 0]"
    )
    parser.add_argument("--consul", help="the Consul agent [$CONSUL_HTTP_ADDR, http://127.0.0.1:8500]")
    parser.add_argument("--bootstrap-out", type=Path, help="write a gRPC xDS bootstrap file there")
    parser.add_argument("--node-id", help="the node id the bootstrap gives clients [local-client]")
    parser.add_argument("--client-identity", metavar="NAME", help="keep NAME's certificate files for clients")
    parser.add_argument("--client-token-file", type=Path, help="NAME's ACL token (service:write on NAME)")
    parser.add_argument("--client-certs", type=Path, metavar="DIR", help="where [.mesh-certs/NAME]")


def _read_token(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as error:
        raise ConfigError(f"client token file {path!r} cannot be read: {error.strerror}") from None


def xds_settings(environ: Mapping[str, str], options: argparse.Namespace | None = None) -> XdsSettings:
    """Build the settings: ``options`` (from :func:`add_arguments`) over ``environ``."""

    def pick(name: str, variable: str, default: str) -> str:
        value = getattr(options, name, None) if options is not None else None
        return str(value) if value is not None else env_str(environ, variable, default)

    security = security_settings_from_env(environ)
    try:
        port = int(pick("port", "MESH_XDS_PORT", str(DEFAULT_PORT)))
        admin_port = int(pick("admin_port", "MESH_XDS_ADMIN_PORT", "0"))
    except ValueError as error:
        raise ConfigError(f"MESH_XDS_PORT and MESH_XDS_ADMIN_PORT must be integers: {error}") from None
    bootstrap = pick("bootstrap_out", "MESH_XDS_BOOTSTRAP", "")
    certs = pick("client_certs", "MESH_XDS_CLIENT_CERTS", "")
    token_file = pick("client_token_file", "MESH_XDS_CLIENT_TOKEN_FILE", "")
    return XdsSettings(
        host=pick("host", "MESH_XDS_HOST", "127.0.0.1"),
        port=port,
        admin_port=admin_port,
        consul_address=pick("consul", "CONSUL_HTTP_ADDR", "http://127.0.0.1:8500"),
        consul_token=security.consul_token,
        stale=consul_stale_from_env(environ),
        insecure=security.insecure,
        policy=policy_from_env(environ),
        bootstrap_out=Path(bootstrap) if bootstrap else None,
        node_id=pick("node_id", "MESH_XDS_NODE_ID", DEFAULT_NODE_ID),
        client_identity=pick("client_identity", "MESH_XDS_CLIENT_IDENTITY", ""),
        client_token=_read_token(token_file) if token_file else "",
        client_certs=Path(certs) if certs else None,
        grace_seconds=env_float(environ, "MESH_GRACE_SECONDS", 2.0),
        log_level=env_str(environ, "MESH_LOG_LEVEL", "INFO"),
        consul_wait=float(env_int(environ, "MESH_XDS_CONSUL_WAIT", 30)),
    )
