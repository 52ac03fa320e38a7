"""Who is calling, as the transport proves it: the peer's service from its client certificate.

Under mTLS the server has verified the client's certificate chain against the current Connect
roots during the handshake; its SPIFFE URI (``peer_uri`` in the auth context) names the calling
service. In the plaintext debugging mode (``MESH_INSECURE=1``) there is no proof, and the
caller's claim in ``x-mesh-peer`` is taken at its word (see :mod:`mesh.connect.settings`).
"""

from __future__ import annotations

from typing import Any

from mesh.connect.spiffe import SpiffeId

PEER_HEADER = "x-mesh-peer"  # plaintext mode only: the service a caller claims to be
PEER_URI = "peer_uri"  # the auth-context property gRPC fills from the client certificate's URI SAN


def peer_identity(context: Any) -> SpiffeId | None:
    """The SPIFFE ID of an mTLS caller, or None (plaintext, or no Consul service URI)."""
    values = context.auth_context().get(PEER_URI)
    if not values:
        return None
    value = values[0]
    try:
        return SpiffeId.parse(value.decode() if isinstance(value, bytes) else value)
    except (ValueError, UnicodeDecodeError):
        return None


def claimed_peer(metadata: Any) -> str | None:
    """The service a plaintext caller claims in ``x-mesh-peer`` (one value, else None)."""
    claims = [value for key, value in metadata or () if key.lower() == PEER_HEADER]
    if len(claims) != 1:
        return None
    claim = claims[0]
    return (claim.decode() if isinstance(claim, bytes) else claim).strip() or None


def peer_service(context: Any, insecure: bool) -> str | None:
    """The calling service: from the certificate under mTLS, from ``x-mesh-peer`` when insecure."""
    if insecure:
        return claimed_peer(context.invocation_metadata())
    identity = peer_identity(context)
    return identity.service if identity is not None else None


def peer_metadata(service: str, insecure: bool) -> tuple[tuple[str, str], ...]:
    """What a caller adds so the callee knows it: nothing under mTLS (the certificate says it)."""
    return ((PEER_HEADER, service),) if insecure else ()
