"""A test calling mTLS services from outside the mesh: certificates for any identity, and the
intentions a shop needs, from a Consul dev agent without ACLs.

Without ACLs the agent hands a leaf for any name to any local process, which is what a test
wants here: it calls as ``cli`` (the identity tools present) or, to replay a service's calls,
as that service. Servers still verify the chain and ask intentions, exactly as in production.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from mesh.connect.spiffe import server_name
from mesh.registry.dev_agent import ConsulDevAgent
from services.mesh_policy import SHOP
from tests.support.connect import set_intention


def allow_shop_calls(agent: ConsulDevAgent) -> None:
    """The shop's intentions (services/mesh_policy.py): its calls allowed, every other denied."""
    for source, destination in SHOP.allow:
        set_intention(agent, source, destination, "allow")
    for source, destination in SHOP.deny:
        set_intention(agent, source, destination, "deny")


def _get(agent: ConsulDevAgent, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(agent.http_addr + path, timeout=10) as reply:
        answer = json.loads(reply.read())
    assert isinstance(answer, dict)
    return answer


@dataclass
class MeshClients:
    """Channel credentials of any identity, fetched once each, and the name each server proves."""

    agent: ConsulDevAgent
    _leaves: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    _roots: tuple[str, bytes] | None = None

    def _trust(self) -> tuple[str, bytes]:
        if self._roots is None:
            answer = _get(self.agent, "/v1/agent/connect/ca/roots")
            pem = "".join(root["RootCert"].rstrip("\n") + "\n" for root in answer["Roots"])
            self._roots = (str(answer["TrustDomain"]), pem.encode())
        return self._roots

    def credentials(self, identity: str) -> grpc.ChannelCredentials:
        if identity not in self._leaves:
            leaf = _get(self.agent, f"/v1/agent/connect/ca/leaf/{identity}")
            self._leaves[identity] = (leaf["CertPEM"].encode(), leaf["PrivateKeyPEM"].encode())
        cert, key = self._leaves[identity]
        return grpc.ssl_channel_credentials(self._trust()[1], key, cert)

    def options(self, service: str) -> list[tuple[str, str]]:
        """Verify that the server holds ``service``'s certificate (its CN: mesh.connect.spiffe)."""
        return [("grpc.ssl_target_name_override", server_name(service, self._trust()[0]))]

    def aio_channel(self, address: str, service: str, identity: str = "cli") -> grpc.aio.Channel:
        return grpc.aio.secure_channel(address, self.credentials(identity), options=self.options(service))

    def channel(self, address: str, service: str, identity: str = "cli") -> grpc.Channel:
        return grpc.secure_channel(address, self.credentials(identity), options=self.options(service))
