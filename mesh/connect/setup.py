"""A process's mTLS, opened once in its ``__main__``: identity, intentions and the server's gate.

:func:`connect_workload` is what a service (or the gateway, a client only) calls at start: it
waits for the first certificate, starts following intentions, and returns the parts the
server (:class:`~mesh.server.MeshServer`) and the channels (:class:`~mesh.channel.MeshChannel`)
take. With ``MESH_INSECURE=1`` it returns None after a loud warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from mesh.connect.ca import ConnectCA
from mesh.connect.guard import IntentionGuard
from mesh.connect.intentions import IntentionAuthorizer
from mesh.connect.settings import INSECURE_WARNING, SecuritySettings
from mesh.connect.workload import WorkloadIdentity
from mesh.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class ConnectedWorkload:
    """This process's identity and, for a server, the gate intentions keep."""

    identity: WorkloadIdentity
    authorizer: IntentionAuthorizer
    guard: IntentionGuard

    async def close(self) -> None:
        await self.authorizer.close()
        await self.identity.close()


async def connect_workload(
    service: str, consul_address: str, settings: SecuritySettings, *, start_within: float = 30.0
) -> ConnectedWorkload | None:
    """The workload's mTLS parts, or None (after a loud warning) when ``settings.insecure``."""
    if settings.insecure:
        log.warning(INSECURE_WARNING, extra={"event": "insecure_mode"})
        return None
    if not consul_address:
        raise ConfigError(
            "mTLS needs the local Consul agent (set CONSUL_HTTP_ADDR); "
            "MESH_INSECURE=1 runs plaintext for local debugging"
        )
    ca = ConnectCA(consul_address, token=settings.consul_token)
    try:
        identity = await WorkloadIdentity(service, ca).start(start_within)
    except BaseException:
        await ca.close()  # the identity owns the client only once it has started
        raise
    own = identity.bundle.identity
    authorizer = IntentionAuthorizer(
        ca,
        service,
        default_allow=settings.intentions_default_allow,
        peer_uri=lambda name: replace(own, service=name).uri,  # callers in our namespace and datacenter
    )
    try:
        await authorizer.start()
    except BaseException:
        await identity.close()
        raise
    return ConnectedWorkload(identity, authorizer, IntentionGuard(identity, authorizer))
