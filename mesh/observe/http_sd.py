"""Prometheus HTTP service discovery from Consul: every instance that publishes ``metrics_port``.

Why this exists: Debian's Prometheus (2.42) is built without Consul discovery
(``field consul_sd_configs not found``), while ``http_sd_configs`` works in every build.
Prometheus GETs this document every ``refresh_interval`` and scrapes what it lists; the
dashboard serves it at ``/sd`` (:func:`http_sd_handler`), and docs/prometheus.md has both
configurations (this one and ``consul_sd_configs`` for upstream builds).

The document is one target group per instance (``host:metrics_port``), labelled
``service``, ``instance_id`` and ``node``, the labels the recording rules aggregate by. Each
group also carries the ``__meta_consul_*`` labels Prometheus' own Consul discovery would set
(dropped after relabeling, as any ``__meta_`` label), so a relabel rule written for one
works with the other. Instances are listed passing or not: a failing instance should show
as down (``up == 0``), not vanish. Instances without a ``metrics_port`` are left out (the
``consul`` service itself, or anything not instrumented).

When Consul cannot be read the endpoint answers 503, never an empty list: on an error
Prometheus keeps the targets it had, while an empty list would drop every target at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from mesh.errors import RegistryUnavailable
from mesh.registry.consul_api import parse_address

log = logging.getLogger(__name__)

# mesh.telemetry.METRICS_PORT_META, spelled out: importing telemetry would load the server and
# tracing stacks into a web app that only reads Consul.
METRICS_PORT_META = "metrics_port"

TargetGroup = dict[str, Any]  # {"targets": ["host:port"], "labels": {name: value}}
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_FAILURES = (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError)


def label_name(name: str) -> str:
    """A meta key as Prometheus writes it into a label name (its ``SanitizeLabelName``)."""
    return _INVALID_LABEL_CHARS.sub("_", name)


def _health(checks: Iterable[Mapping[str, Any]]) -> str:
    """The instance's aggregated status, as ``__meta_consul_health`` reports it: the worst check."""
    statuses = {str(check.get("Status", "")) for check in checks}
    return next((s for s in ("maintenance", "critical", "warning") if s in statuses), "passing")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _metrics_port(meta: Mapping[str, Any]) -> int | None:
    raw = str(meta.get(METRICS_PORT_META, "")).strip()
    return int(raw) if raw.isdigit() and 0 < int(raw) < 65536 else None


def consul_meta_labels(row: Mapping[str, Any]) -> dict[str, str]:
    """The ``__meta_consul_*`` labels Prometheus' consul_sd would give this row's instance."""
    service: Mapping[str, Any] = row.get("Service") or {}
    node: Mapping[str, Any] = row.get("Node") or {}
    tags = [str(tag) for tag in service.get("Tags") or ()]
    labels = {
        "__meta_consul_service": str(service.get("Service", "")),
        "__meta_consul_service_id": str(service.get("ID", "")),
        "__meta_consul_service_address": str(service.get("Address", "")),
        "__meta_consul_service_port": str(service.get("Port", "")),
        "__meta_consul_node": str(node.get("Node", "")),
        "__meta_consul_address": str(node.get("Address", "")),
        "__meta_consul_dc": str(node.get("Datacenter", "")),
        "__meta_consul_tags": f",{','.join(tags)}," if tags else "",
        "__meta_consul_health": _health(row.get("Checks") or ()),
    }
    for key, value in (service.get("Meta") or {}).items():
        labels[f"__meta_consul_service_metadata_{label_name(str(key))}"] = str(value)
    for key, value in (node.get("Meta") or {}).items():
        labels[f"__meta_consul_metadata_{label_name(str(key))}"] = str(value)
    for key, value in (node.get("TaggedAddresses") or {}).items():
        labels[f"__meta_consul_tagged_address_{label_name(str(key))}"] = str(value)
    return labels


def target_group(row: Mapping[str, Any]) -> TargetGroup | None:
    """One ``/v1/health/service/<name>`` row as a target group; None without a usable metrics_port."""
    service: Mapping[str, Any] = row.get("Service") or {}
    node: Mapping[str, Any] = row.get("Node") or {}
    port = _metrics_port(service.get("Meta") or {})
    host = str(service.get("Address") or node.get("Address") or "")
    if port is None or not host:
        return None
    labels = {
        "service": str(service.get("Service", "")),
        "instance_id": str(service.get("ID", "")),
        "node": str(node.get("Node", "")),
        **consul_meta_labels(row),
    }
    return {"targets": [_host_port(host, port)], "labels": labels}


def sd_document(rows: Iterable[Mapping[str, Any]]) -> list[TargetGroup]:
    """The http_sd document for health rows of any services: one group per instance, in a stable order."""
    groups = [group for group in map(target_group, rows) if group is not None]
    return sorted(groups, key=lambda g: (g["labels"]["service"], g["labels"]["instance_id"]))


class ConsulRows:
    """Reads every service's health rows from a Consul agent's HTTP API (``?stale``, like consul_sd).

    Raw rows rather than :class:`mesh.registry.consul_api.ConsulApi`'s parsed entries: the
    ``__meta_consul_*`` labels need the node's datacenter, meta and tagged addresses, which
    those entries do not keep. One HTTP session per read: Prometheus asks every 15 seconds or
    so, and a session that lives only as long as the read leaves nothing for the app to close.
    Every failure is raised as :class:`RegistryUnavailable`.
    """

    def __init__(self, address: str, token: str = "", *, timeout: float = 5.0) -> None:
        host, port, scheme = parse_address(address)
        self.base = f"{scheme}://{_host_port(host, port)}"
        self._headers = {"X-Consul-Token": token} if token else {}  # never logged
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def rows(self) -> list[Mapping[str, Any]]:
        """Every instance of every service in the catalog, as raw health rows (all statuses)."""
        async with aiohttp.ClientSession(timeout=self._timeout, headers=self._headers) as session:
            names = await self._get(session, "/v1/catalog/services")
            answers = await asyncio.gather(
                *(
                    self._get(session, f"/v1/health/service/{quote(str(name), safe='')}")
                    for name in sorted(names or {})
                )
            )
        return [row for rows in answers for row in rows or ()]

    async def _get(self, session: aiohttp.ClientSession, path: str) -> Any:
        try:
            async with session.get(f"{self.base}{path}", params={"stale": ""}) as response:
                if response.status != 200:
                    text = (await response.text())[:200]
                    raise RegistryUnavailable("consul", f"GET {path}: {response.status} {text}")
                return await response.json()
        except _FAILURES as exc:
            raise RegistryUnavailable("consul", f"GET {path} at {self.base}: {exc!r}") from exc


Handler = Callable[[web.Request], Awaitable[web.Response]]


def sd_handler(source: ConsulRows) -> Handler:
    """The aiohttp handler serving the document of what ``source`` reads (503 when it cannot)."""

    async def handle(request: web.Request) -> web.Response:
        try:
            document = sd_document(await source.rows())
        except RegistryUnavailable as exc:
            log.warning("service discovery document unavailable: %s", exc)
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response(document)

    return handle


def http_sd_handler(consul_address: str, token: str = "") -> Handler:
    """The ``/sd`` handler for the agent at ``consul_address`` (``token``: the Consul ACL token).

    Mount it with ``app.router.add_get("/sd", http_sd_handler(address, token))``; it holds
    nothing open between requests, so there is nothing to close.
    """
    return sd_handler(ConsulRows(consul_address, token))
