"""A small typed face on py-consul's asyncio client.

py-consul is untyped and raises a mix of aiohttp, asyncio and Consul exceptions; this module
is the one place that knows that. Everything it raises for an unreachable or failing agent
is :class:`mesh.errors.RegistryUnavailable`, so callers handle one error type.

Facts this leans on (py-consul 1.8.0, as pinned in pyproject.toml): ``consul.aio.Consul``
must be built inside a running loop, so the client is created lazily; the blocking-query
index is a string and goes back unchanged; ``locality=``/``socket_path=`` are rejected by
Consul 1.8.7 and never sent; ``health.service`` has no consistency argument, so a ``?stale``
read is sent through the client's own ``http.get`` (same parameters, same token header), whose
callback sees the response headers and with them ``X-Consul-KnownLeader``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import consul
import consul.aio
import consul.callback

from mesh.errors import RegistryUnavailable
from mesh.registry.base import ServiceInstance

log = logging.getLogger(__name__)

_FAILURES = (aiohttp.ClientError, consul.ConsulException, OSError, asyncio.TimeoutError, ValueError)


@dataclass(frozen=True)
class HealthEntry:
    """One row of ``/v1/health/service/<name>``: the instance and its aggregated status."""

    instance: ServiceInstance
    status: str  # "passing", "warning" or "critical" (the worst of its checks)
    checks: tuple[tuple[str, str, str], ...]  # (check id, status, output)
    node: str = ""  # the Consul node (agent) the instance registered with


def parse_address(address: str) -> tuple[str, int, str]:
    """``http://host:port``, ``https://host:port`` or ``host:port`` -> (host, port, scheme)."""
    parts = urlsplit(address if "//" in address else f"//{address}")
    try:
        port = parts.port
    except ValueError as exc:  # urlsplit validates the port lazily
        raise ValueError(f"invalid Consul address {address!r}") from exc
    if not parts.hostname:
        raise ValueError(f"invalid Consul address {address!r}")
    return parts.hostname, port or 8500, parts.scheme or "http"


def _worst(statuses: list[str]) -> str:
    for status in ("critical", "warning"):
        if status in statuses:
            return status
    return "passing"


def health_entry(raw: Mapping[str, Any]) -> HealthEntry:
    """Turn one health row into a :class:`HealthEntry` (service address falls back to the node's)."""
    service = raw["Service"]
    address = service.get("Address") or raw["Node"]["Address"]
    instance = ServiceInstance(
        id=str(service["ID"]),
        name=str(service["Service"]),
        address=str(address),
        port=int(service["Port"]),
        tags=tuple(service.get("Tags") or ()),
        meta=dict(service.get("Meta") or {}),
    )
    checks = tuple(
        (str(c.get("CheckID", "")), str(c.get("Status", "")), str(c.get("Output", "")))
        for c in raw.get("Checks") or ()
    )
    node = str((raw.get("Node") or {}).get("Node", ""))
    return HealthEntry(instance=instance, status=_worst([c[1] for c in checks]), checks=checks, node=node)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """One response header, whatever the case (Go sends ``X-Consul-Knownleader``)."""
    wanted = name.lower()
    return next((value for key, value in headers.items() if key.lower() == wanted), None)


class ConsulApi:
    """The handful of Consul agent calls the mesh needs, typed and with one error type.

    ``stale=True`` makes :meth:`health` read with Consul's ``stale`` consistency by default:
    whichever server the agent forwards to answers from its own state, leader or not, so reads
    spread over the servers and still answer while the cluster has no leader (possibly a
    little behind the leader). Writes (register, deregister) need a leader either way.
    """

    def __init__(
        self,
        address: str = "http://127.0.0.1:8500",
        *,
        request_timeout: float = 5.0,
        token: str = "",
        stale: bool = False,
    ) -> None:
        self.address = address
        self.stale = stale
        # What the server of the last stale read said of the leader (X-Consul-KnownLeader);
        # None before any stale read. Informational: a stale answer is not trusted more for it.
        self.known_leader: bool | None = None
        self._token = token  # the ACL token (X-Consul-Token); never logged
        self._host, self._port, self._scheme = parse_address(address)
        self._timeout = request_timeout
        self._client: Any = None

    def _consul(self) -> Any:
        if self._client is None:
            # verify only matters for https; for http it would only make py-consul build an
            # unused SSL context (and trip aiohttp's ssl_context deprecation warning).
            self._client = consul.aio.Consul(
                host=self._host,
                port=self._port,
                scheme=self._scheme,
                verify=self._scheme == "https",
                token=self._token or None,
            )
            # py-consul lets a CONSUL_HTTP_TOKEN in the environment win over the token passed
            # in; the mesh's settings object is what decides, so put ours back.
            self._client.token = self._token or None
        return self._client

    async def _run(self, what: str, coro: Any, limit: float | None = None) -> Any:
        try:
            return await asyncio.wait_for(coro, limit or self._timeout)
        except _FAILURES as exc:
            raise RegistryUnavailable("consul", f"{what} at {self.address}: {exc!r}") from exc

    async def register(self, instance: ServiceInstance, check: Mapping[str, Any]) -> None:
        """Register ``instance`` with the local agent, replacing any earlier definition."""
        agent = self._consul().agent
        await self._run(
            f"register {instance.id}",
            agent.service.register(
                instance.name,
                service_id=instance.id,
                address=instance.address,
                port=instance.port,
                tags=list(instance.tags),
                meta=dict(instance.meta),
                check=dict(check),
                replace_existing_checks=True,
            ),
        )

    async def deregister(self, service_id: str) -> None:
        """Remove ``service_id`` (and its checks) from the local agent."""
        await self._run(f"deregister {service_id}", self._consul().agent.service.deregister(service_id))

    async def is_registered(self, service_id: str) -> bool:
        """Whether the local agent still knows ``service_id`` (it forgets on restart in dev mode)."""
        # py-consul's service_definition sends no ACL token: with ACLs on, the agent would answer
        # 403 (or, for the anonymous token, as if the service were gone), so send it ourselves.
        client = self._consul()
        found = await self._run(
            f"read {service_id}",
            client.http.get(
                consul.callback.CB.json(), f"/v1/agent/service/{service_id}", headers=client.prepare_headers()
            ),
        )
        return found is not None

    async def health(
        self,
        name: str,
        *,
        index: str | None = None,
        wait: float = 0.0,
        passing: bool = True,
        stale: bool | None = None,
    ) -> tuple[str, list[HealthEntry]]:
        """``/v1/health/service/<name>``; with ``index`` it blocks up to ``wait`` seconds for a change.

        ``stale`` picks the consistency of this read (None: the api's own ``stale`` setting):
        True adds ``?stale`` (any server answers from its state), False is Consul's default
        (the leader answers; "No cluster leader" without one, raised as RegistryUnavailable).
        """
        index, wait_arg, limit = self._blocking(index, wait)
        client = self._consul()
        if self.stale if stale is None else stale:
            params: list[tuple[str, str]] = []
            if index and wait_arg:
                params += [("index", index), ("wait", wait_arg)]
            if passing:
                params.append(("passing", "1"))
            if client.dc:
                params.append(("dc", client.dc))
            params.append(("stale", ""))
            request = client.http.get(
                self._stale_callback(name),
                f"/v1/health/service/{name}",
                params=params,
                headers=client.prepare_headers(),
            )
        else:
            request = client.health.service(name, index=index, wait=wait_arg, passing=passing)
        new_index, rows = await self._run(f"health of {name!r}", request, limit)
        return str(new_index), [health_entry(row) for row in rows or ()]

    def _blocking(self, index: str | None, wait: float) -> tuple[str | None, str | None, float]:
        """A blocking query's ``index`` and ``wait`` arguments, and how long to let it take."""
        if wait <= 0:
            index = None  # an index without a wait would block for Consul's default 5 minutes
        wait_arg = f"{wait:g}s" if index else None
        # Consul adds up to wait/16 of jitter to a blocking query; allow for it and the network.
        return index, wait_arg, self._timeout + (wait * 1.1 if wait_arg else 0.0)

    def _stale_callback(self, name: str) -> Callable[[Any], Any]:
        """py-consul's ``(index, rows)`` parser, noting the answering server's KnownLeader header."""
        parse = consul.callback.CB.json(index=True)

        def callback(response: Any) -> Any:
            result = parse(response)  # raises for an error status, so only answers are noted
            self._note_leader(name, _header(response.headers, "X-Consul-KnownLeader"))
            return result

        return callback

    def _note_leader(self, name: str, header: str | None) -> None:
        if header is None:
            return
        known = header.strip().lower() == "true"
        if not known and self.known_leader is not False:
            log.warning(
                "consul at %s answered a stale read of %r without knowing a cluster leader; "
                "serving that server's last known state",
                self.address,
                name,
            )
        elif known and self.known_leader is False:
            log.info("consul at %s knows a cluster leader again", self.address)
        self.known_leader = known

    async def health_index(self, index: str = "", wait: float = 0.0) -> str:
        """The index of every check's state (``/v1/health/state/any``); with ``index``, blocks up
        to ``wait`` seconds for it to move past that. For a caller that only needs to know
        *that* some health changed: the checks themselves are read elsewhere."""
        blocking_index, wait_arg, limit = self._blocking(index or None, wait)
        request = self._consul().health.state("any", index=blocking_index, wait=wait_arg)
        new_index, _ = await self._run("health state", request, limit)
        return str(new_index)

    async def services(self) -> dict[str, list[str]]:
        """Every service name in the catalog with the union of its tags."""
        _, data = await self._run("list services", self._consul().catalog.services())
        return {str(k): [str(t) for t in v or ()] for k, v in (data or {}).items()}

    async def close(self) -> None:
        """Close the HTTP session (safe to call more than once)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
