"""What ``mesh status`` shows of the xDS control planes: the clients each serves, and where each stands.

The control plane registers in Consul as ``xds`` with ``admin_port`` in its meta; its admin
endpoint's ``/clients`` lists every ADS stream with, per resource type, the version last
sent, the version ACKed and the last NACK with the client's own error. This module only reads
that JSON (it imports no Envoy modules), so ``mesh status`` stays as light as before.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mesh.registry.base import ServiceInstance

XDS_SERVICE = "xds"
SHORT_TYPES = {
    "type.googleapis.com/envoy.config.listener.v3.Listener": "LDS",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration": "RDS",
    "type.googleapis.com/envoy.config.cluster.v3.Cluster": "CDS",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment": "EDS",
}


@dataclass(frozen=True)
class ControlPlaneClients:
    """One ``mesh xds`` instance: its clients as its admin endpoint lists them, or why not."""

    target: str
    admin: str
    clients: tuple[dict[str, Any], ...] = ()
    error: str = ""


def _fetch(url: str, timeout: float) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        data = json.loads(reply.read())
    if not isinstance(data, list):
        raise ValueError(f"{url} did not answer a list")
    return data


async def control_plane_clients(
    instances: Iterable[ServiceInstance], wait_seconds: float = 2.0
) -> tuple[ControlPlaneClients, ...]:
    """Ask each control plane instance (with an ``admin_port``) for its clients, side by side."""

    async def ask(instance: ServiceInstance) -> ControlPlaneClients:
        admin = f"http://{instance.address}:{instance.meta['admin_port']}"
        try:
            clients = await asyncio.to_thread(_fetch, f"{admin}/clients", wait_seconds)
        except (OSError, ValueError) as error:
            return ControlPlaneClients(
                instance.target, admin, error=f"admin endpoint did not answer: {error}"
            )
        return ControlPlaneClients(instance.target, admin, tuple(clients))

    with_admin = [i for i in instances if i.meta.get("admin_port", "").isdigit()]
    return tuple(await asyncio.gather(*(ask(instance) for instance in with_admin)))


def _short(version: str) -> str:
    return version[:12] if version else "-"


def render_control_planes(planes: Sequence[ControlPlaneClients]) -> list[str]:
    """Plain-text lines: per control plane, per connected client, each type's ACKed version or NACK."""
    lines: list[str] = []
    for plane in planes:
        connected = [c for c in plane.clients if c.get("connected")]
        lines.append("")
        lines.append(f"xds control plane {plane.target}  (admin {plane.admin})")
        if plane.error:
            lines.append(f"  {plane.error}")
            continue
        lines.append(f"  {len(connected)} client(s) connected")
        for client in connected:
            node = client.get("node", {})
            lines.append(
                f"  {client.get('peer', '?')}  node {node.get('id', '?')}  {node.get('user_agent', '')}"
                f"  since {client.get('connected_since', '?')}"
            )
            for type_url, state in sorted(client.get("types", {}).items()):
                name = SHORT_TYPES.get(type_url, type_url.rsplit(".", 1)[-1])
                subscribed = state.get("subscribed")
                names = "*" if subscribed == "*" else ",".join(subscribed or [])
                line = f"    {name}  acked {_short(state.get('acked_version', ''))}"
                if state.get("pending"):
                    line += f"  (sent {_short(state.get('sent_version', ''))}, not yet ACKed)"
                line += f"  [{names}]"
                nack = state.get("nack")
                if nack:
                    line += (
                        f"  NACKED {_short(nack.get('version', ''))}: {str(nack.get('message', ''))[:160]}"
                    )
                lines.append(line)
    return lines
