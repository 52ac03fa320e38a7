"""How a mesh process secures its calls: mutual TLS from Consul Connect, or loudly not at all.

mTLS is the default. ``MESH_INSECURE=1`` turns it off for local debugging: plaintext on every
port, and a peer's service is whatever it claims in ``x-mesh-peer`` (anyone may claim
anything); a process in that mode says so in a warning at start and in its Consul meta.

The Consul ACL token (``CONSUL_HTTP_TOKEN``, else the file ``CONSUL_HTTP_TOKEN_FILE``) is what
lets a process register, and fetch a certificate for, its own name; it is never logged.
``MESH_INTENTIONS_DEFAULT`` (``deny`` or ``allow``) decides a call no intention matches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mesh.config import env_str
from mesh.errors import ConfigError

INSECURE_WARNING = (
    "MESH_INSECURE=1: mTLS is OFF. Calls are plaintext and callers are not authenticated; "
    "any process may claim to be any service. For local debugging only."
)


@dataclass(frozen=True)
class SecuritySettings:
    """mTLS on or off, the Consul token, and the answer when no intention matches."""

    insecure: bool = False
    consul_token: str = field(default="", repr=False)
    intentions_default_allow: bool = False

    @property
    def mtls(self) -> bool:
        return not self.insecure


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def security_settings_from_env(environ: Mapping[str, str]) -> SecuritySettings:
    """Read ``MESH_INSECURE``, ``CONSUL_HTTP_TOKEN(_FILE)`` and ``MESH_INTENTIONS_DEFAULT``."""
    raw = environ.get("MESH_INSECURE", "").strip().lower()
    if raw not in _TRUE + _FALSE:
        raise ConfigError(f"MESH_INSECURE must be 1 or 0, got {raw!r}")
    default = env_str(environ, "MESH_INTENTIONS_DEFAULT", "deny").lower()
    if default not in ("allow", "deny"):
        raise ConfigError(f"MESH_INTENTIONS_DEFAULT must be allow or deny, got {default!r}")
    return SecuritySettings(
        insecure=raw in _TRUE,
        consul_token=consul_token_from_env(environ),
        intentions_default_allow=default == "allow",
    )


def consul_token_from_env(environ: Mapping[str, str]) -> str:
    """``CONSUL_HTTP_TOKEN``, else the first line of ``CONSUL_HTTP_TOKEN_FILE``, else empty."""
    token = env_str(environ, "CONSUL_HTTP_TOKEN", "")
    if token:
        return token
    path = env_str(environ, "CONSUL_HTTP_TOKEN_FILE", "")
    if not path:
        return ""
    try:
        return Path(path).read_text().strip()
    except OSError as error:
        raise ConfigError(f"CONSUL_HTTP_TOKEN_FILE {path!r} cannot be read: {error.strerror}") from None
