"""The MeshError tree: every failure the mesh raises on its own account.

Each error knows the gRPC status code it maps to, so a servicer or the gateway can turn a
mesh failure into a precise status without a lookup table scattered across call sites.
"""

from __future__ import annotations

import grpc


class MeshError(Exception):
    """Base of every error raised by the mesh itself (not by a remote service)."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class ConfigError(MeshError, ValueError):
    """A setting is missing or invalid; the message names the variable or key."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class DependencyUnavailable(MeshError):
    """Something this process needs is down; ``name`` says what, so callers can tell."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, name: str, detail: str = "") -> None:
        self.name = name
        self.detail = detail
        suffix = f": {detail}" if detail else ""
        super().__init__(f"{name} is unavailable{suffix}")


class NoHealthyEndpoint(DependencyUnavailable):
    """No endpoint of the target service can take a call right now."""

    def __init__(self, service: str) -> None:
        super().__init__(service)
        self.args = (f"no healthy endpoint for '{service}'",)

    def __str__(self) -> str:
        return f"no healthy endpoint for '{self.name}'"


class CircuitOpen(DependencyUnavailable):
    """Every endpoint of the target service has an open breaker: fail fast."""

    def __str__(self) -> str:
        return f"circuit open for '{self.name}'"


class RegistryUnavailable(DependencyUnavailable):
    """The service registry (Consul) cannot be reached."""
