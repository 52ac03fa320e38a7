"""The aggregated discovery service (ADS), state of the world, over one grpc.aio stream per client.

Why state of the world and per-response content versions: every response of a type carries
all the subscribed resources that exist, so a client never depends on having seen an earlier
response, and a resource missing from an LDS/CDS response is how the client learns it does
not exist. ``version_info`` is a digest of exactly what is sent, so the server resends a type
only when its subscribed part really changed, and an operator can compare versions across
clients. Resources are packed once per update (:class:`ResourceCache`), never per client.

The protocol per stream and type (``envoy/service/discovery/v3/discovery.proto``):

- the first request for a type, or a changed subscription, is answered (even when the
  content is unchanged); an empty name list on LDS/CDS (or ``*``) is the wildcard;
- a request whose ``response_nonce`` is the last sent nonce is the client's verdict on that
  response: with ``error_detail`` a NACK (logged at WARNING and recorded; the client stays on
  its previous config and nothing is resent until the content changes), otherwise an ACK when
  its ``version_info`` is the version sent;
- a request with any other non-empty nonce answers an older response and is ignored;
- nothing is sent before the first update of the cache: an empty answer then would tell a
  client that its listener does not exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message

from mesh.xds.clients import ClientRegistry, ClientState, Nack, TypeState
from mesh.xds.model import CLUSTER, LISTENER, RESOURCE_TYPES

log = logging.getLogger(__name__)

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})  # an empty name list subscribes to every resource
# A client's NACK text is kept and logged up to this length: it is the client's own words, and
# a stream must not be able to fill the log or the admin endpoint with them.
MAX_ERROR_CHARS = 1024

Resources = Mapping[str, Mapping[str, Message]]  # type URL -> resource name -> message


@dataclass(frozen=True)
class PackedResource:
    """One resource packed in ``Any`` once, with the digest its versions are computed from."""

    name: str
    packed: any_pb2.Any
    digest: bytes


class ResourceCache:
    """The current resources of every type, packed, and a way to wait for the next update."""

    def __init__(self) -> None:
        self.version = 0  # 0: never updated; streams send nothing yet
        self._types: dict[str, dict[str, PackedResource]] = {}
        self._changed = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.version > 0

    def update(self, resources: Resources) -> bool:
        """Make ``resources`` current; returns whether anything changed (and streams woke)."""
        packed: dict[str, dict[str, PackedResource]] = {}
        for type_url, by_name in resources.items():
            packed[type_url] = {name: _pack(name, message) for name, message in by_name.items()}
        if self.ready and _digests(packed) == _digests(self._types):
            return False
        self._types = packed
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    def select(self, type_url: str, names: frozenset[str] | None) -> list[PackedResource]:
        """The resources of ``type_url`` among ``names`` (None: all) that exist, by name."""
        by_name = self._types.get(type_url, {})
        chosen = by_name.keys() if names is None else names & by_name.keys()
        return [by_name[name] for name in sorted(chosen)]

    def summary(self) -> dict[str, dict[str, str]]:
        """Type URL -> name -> short digest, for the admin endpoint."""
        return {
            type_url: {name: resource.digest.hex()[:12] for name, resource in sorted(by_name.items())}
            for type_url, by_name in sorted(self._types.items())
        }

    async def wait_newer(self, version: int) -> None:
        """Return once the cache's version differs from ``version``."""
        while self.version == version:
            await self._changed.wait()


def _pack(name: str, message: Message) -> PackedResource:
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return PackedResource(name, packed, hashlib.sha256(packed.SerializeToString(deterministic=True)).digest())


def _digests(types: Mapping[str, Mapping[str, PackedResource]]) -> dict[str, dict[str, bytes]]:
    return {url: {name: r.digest for name, r in by_name.items()} for url, by_name in types.items()}


def content_version(resources: Iterable[PackedResource]) -> str:
    """The version of a response: a digest of the names and contents it carries."""
    digest = hashlib.sha256()
    for resource in resources:
        digest.update(resource.name.encode() + b"\0" + resource.digest)
    return digest.hexdigest()[:16]


class AggregatedDiscoveryService(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """The ADS servicer: many streams, all answering from one :class:`ResourceCache`."""

    def __init__(self, cache: ResourceCache, clients: ClientRegistry | None = None) -> None:
        self.cache = cache
        self.clients = clients or ClientRegistry()
        self._nonces = itertools.count(1)
        self._closing = asyncio.Event()

    def close_streams(self) -> None:
        """End every open stream (and refuse new ones): clients keep their config and reconnect."""
        self._closing.set()

    async def DeltaAggregatedResources(
        self, request_iterator: Any, context: grpc.aio.ServicerContext
    ) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "incremental xDS is not served; use state of the world"
        )

    async def StreamAggregatedResources(  # the generated method name
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        client = self.clients.connect(context.peer())
        log.info(
            "xds client connected",
            extra={"event": "xds_connect", "peer": client.peer, "stream": client.stream},
        )
        requests = aiter(request_iterator)
        reading: asyncio.Future[Any] = asyncio.ensure_future(anext(requests, None))
        changed = asyncio.ensure_future(self.cache.wait_newer(self.cache.version))
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            while True:
                done, _ = await asyncio.wait({reading, changed, closing}, return_when=asyncio.FIRST_COMPLETED)
                if closing in done:
                    return
                if reading in done:
                    request = _result(reading)
                    if request is None:
                        return
                    self.on_request(client, request)
                    reading = asyncio.ensure_future(anext(requests, None))
                if changed in done:
                    changed = asyncio.ensure_future(self.cache.wait_newer(self.cache.version))
                for response in self.responses(client):
                    yield response
        finally:
            for task in (reading, changed, closing):
                task.cancel()
            self.clients.disconnect(client)
            log.info(
                "xds client disconnected",
                extra={
                    "event": "xds_disconnect",
                    "peer": client.peer,
                    "stream": client.stream,
                    "node": client.node_id,
                },
            )

    def on_request(self, client: ClientState, request: discovery_pb2.DiscoveryRequest) -> None:
        """Apply one request to the stream's state: node, verdict on the last response, subscription."""
        if request.HasField("node"):
            _note_node(client, request.node)
        if request.type_url not in RESOURCE_TYPES:
            # Nothing of it is served; no state is kept for it, so made-up type URLs cost nothing.
            client.unknown_requests += 1
            if client.unknown_requests == 1:
                log.warning(
                    "xds client %s asked for a type this control plane does not serve: %.200s",
                    client.node_id or client.peer,
                    request.type_url,
                    extra={"event": "xds_unknown_type", "peer": client.peer},
                )
            return
        state = client.type_state(request.type_url)
        nonce = request.response_nonce
        if nonce and nonce != state.sent_nonce:
            state.ignored += 1  # answers an older response; a newer request is on its way
            return
        if nonce:
            self._verdict(client, state, request)
        names = frozenset(request.resource_names)
        wanted = None if ("*" in names or (not names and request.type_url in WILDCARD_TYPES)) else names
        if not state.requested or wanted != state.names:
            state.requested, state.names, state.resend = True, wanted, True

    def _verdict(
        self, client: ClientState, state: TypeState, request: discovery_pb2.DiscoveryRequest
    ) -> None:
        if request.HasField("error_detail"):
            message = request.error_detail.message[:MAX_ERROR_CHARS]
            state.nack = Nack(state.sent_version, request.response_nonce, message, time.time())
            log.warning(
                "xds client %s rejected %s version %s: %s",
                client.node_id or client.peer,
                request.type_url,
                state.sent_version,
                message,
                extra={
                    "event": "xds_nack",
                    "node": client.node_id,
                    "peer": client.peer,
                    "type_url": request.type_url,
                    "version": state.sent_version,
                    "error": message,
                },
            )
        elif request.version_info == state.sent_version:
            state.acked_version, state.acked_at = request.version_info, time.time()

    def responses(self, client: ClientState) -> list[discovery_pb2.DiscoveryResponse]:
        """What the stream must send now: each requested type whose subscribed content differs."""
        if not self.cache.ready:
            return []
        out = []
        for state in client.types.values():
            if not state.requested or (state.names is not None and not state.names):
                state.resend = False  # nothing subscribed: nothing to say
                continue
            chosen = self.cache.select(state.type_url, state.names)
            version = content_version(chosen)
            if not state.resend and version == state.sent_version:
                continue
            nonce = str(next(self._nonces))
            out.append(
                discovery_pb2.DiscoveryResponse(
                    version_info=version,
                    resources=[resource.packed for resource in chosen],
                    type_url=state.type_url,
                    nonce=nonce,
                )
            )
            state.sent_version, state.sent_nonce, state.sent_at = version, nonce, time.time()
            state.sent_names = tuple(resource.name for resource in chosen)
            state.responses += 1
            state.resend = False
        return out


def _result(reading: asyncio.Future[Any]) -> Any:
    """The next request, or None when the client half-closed or the stream broke."""
    with contextlib.suppress(Exception):
        return reading.result()
    return None


def _note_node(client: ClientState, node: Any) -> None:
    client.node_id = node.id
    client.node_cluster = node.cluster
    client.node_metadata = json_format.MessageToDict(node.metadata)
    locality = node.locality
    client.node_locality = {
        key: value
        for key, value in (
            ("region", locality.region),
            ("zone", locality.zone),
            ("sub_zone", locality.sub_zone),
        )
        if value
    }
    client.user_agent = f"{node.user_agent_name} {node.user_agent_version}".strip()


def add_to_server(service: AggregatedDiscoveryService, server: grpc.aio.Server) -> None:
    """Register ``service`` with ``server`` (or a registrar standing in for it)."""
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(service, server)
