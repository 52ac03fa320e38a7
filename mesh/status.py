"""``mesh status``: what Consul knows, and what a mesh channel in this process would call.

Read-only and independent of any running mesh process: it asks the agent for every service
(or the ones named), every instance with its checks, and derives the endpoints a MeshChannel
would spread calls over (the passing ones, after an optional tag subset). When an ``xds``
control plane is registered, it also lists the xDS clients each one serves and the version of
each resource type every client has ACKed or NACKed (:mod:`mesh.xds.admin_client`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from mesh.balancer.subset import subset
from mesh.errors import RegistryUnavailable
from mesh.registry.base import ServiceInstance
from mesh.registry.consul_api import ConsulApi, HealthEntry
from mesh.xds.admin_client import (
    XDS_SERVICE,
    ControlPlaneClients,
    control_plane_clients,
    render_control_planes,
)

CONSUL_SELF = "consul"  # the agent's own service entry; not a mesh service


@dataclass(frozen=True)
class ServiceStatus:
    """One service: every instance with its health, and the endpoints calls would go to."""

    name: str
    instances: tuple[HealthEntry, ...]
    endpoints: tuple[ServiceInstance, ...]

    @property
    def passing(self) -> int:
        """How many instances pass every check."""
        return sum(1 for entry in self.instances if entry.status == "passing")


@dataclass(frozen=True)
class MeshStatus:
    """The whole picture from one Consul agent."""

    consul: str
    services: tuple[ServiceStatus, ...]
    control_planes: tuple[ControlPlaneClients, ...] = ()


async def collect_status(
    consul_address: str,
    services: Sequence[str] = (),
    *,
    tags: tuple[str, ...] = (),
    api: ConsulApi | None = None,
) -> MeshStatus:
    """Ask Consul; raises :class:`mesh.errors.RegistryUnavailable` when it does not answer."""
    client = api or ConsulApi(consul_address)
    try:
        names = list(services) or sorted(n for n in await client.services() if n != CONSUL_SELF)
        result = []
        for name in names:
            _, entries = await client.health(name, passing=False)
            ordered = tuple(sorted(entries, key=lambda e: (e.instance.target, e.instance.id)))
            passing = tuple(e.instance for e in ordered if e.status == "passing")
            result.append(ServiceStatus(name, ordered, subset(passing, tags)))
        planes = [e.instance for s in result if s.name == XDS_SERVICE for e in s.instances]
        return MeshStatus(consul_address, tuple(result), await control_plane_clients(planes))
    finally:
        if api is None:
            await client.close()


def render_status(status: MeshStatus) -> str:
    """A plain-text report, one block per service."""
    lines = [f"consul {status.consul}: {len(status.services)} service(s)"]
    for service in status.services:
        lines.append("")
        lines.append(f"{service.name}  {service.passing}/{len(service.instances)} passing")
        for entry in service.instances:
            instance = entry.instance
            version = instance.meta.get("version", "?")
            tags = f"  tags={','.join(instance.tags)}" if instance.tags else ""
            lines.append(
                f"  {entry.status:<8}  {instance.target:<21}  {instance.id}  version={version}{tags}"
            )
            for check_id, check_status, output in entry.checks:
                if check_status != "passing":
                    lines.append(f"            {check_id}: {check_status} {output.strip()[:120]}")
        picked = ", ".join(e.target for e in service.endpoints) or "none (calls fail: no healthy endpoint)"
        lines.append(f"  would call: {picked}")
    lines.extend(render_control_planes(status.control_planes))
    return "\n".join(lines)


def status_as_dict(status: MeshStatus) -> dict[str, Any]:
    """The report as JSON-ready data (for ``mesh status --json``)."""
    return {
        "consul": status.consul,
        "services": [
            {
                "name": service.name,
                "passing": service.passing,
                "instances": [
                    {
                        "id": entry.instance.id,
                        "address": entry.instance.target,
                        "status": entry.status,
                        "tags": list(entry.instance.tags),
                        "meta": dict(entry.instance.meta),
                        "checks": [{"id": c, "status": s, "output": o} for c, s, o in entry.checks],
                    }
                    for entry in service.instances
                ],
                "endpoints": [endpoint.target for endpoint in service.endpoints],
            }
            for service in status.services
        ],
        "xds": [
            {"control_plane": p.target, "admin": p.admin, "clients": list(p.clients), "error": p.error}
            for p in status.control_planes
        ],
    }


async def _collect_and_close(
    api: ConsulApi, consul_address: str, services: Sequence[str], tags: tuple[str, ...]
) -> MeshStatus:
    try:
        return await collect_status(consul_address, services, tags=tags, api=api)
    finally:
        await api.close()


def run_status(
    consul_address: str,
    services: Sequence[str] = (),
    *,
    tags: tuple[str, ...] = (),
    as_json: bool = False,
    out: TextIO | None = None,
    token: str = "",
) -> int:
    """The ``mesh status`` command body: print the report; exit code 0, or 2 if Consul is down."""
    stream = out or sys.stdout
    try:
        api = ConsulApi(consul_address, token=token)
        status = asyncio.run(_collect_and_close(api, consul_address, services, tags))
    except RegistryUnavailable as error:
        print(f"mesh status: {error}", file=sys.stderr)
        return 2
    print(json.dumps(status_as_dict(status), indent=2) if as_json else render_status(status), file=stream)
    return 0
