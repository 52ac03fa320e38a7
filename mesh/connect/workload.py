"""This process's workload identity: its leaf certificate and the CA roots, kept current.

Start waits for the first certificate (a server must not listen, nor a client dial, without
one) and fails clearly when the agent cannot give it: Connect disabled, the ACL token refused,
or no agent within the start timeout. Then two blocking queries follow the agent, one on the
leaf and one on the roots; the agent re-issues the leaf before it expires and after a CA
rotation, and each change becomes a new :class:`Bundle`:

- servers hand gRPC *dynamic* server credentials whose fetch callback gRPC calls on every new
  handshake: it answers with the newest certificate when it changed, so new connections use
  it while those already open finish on the old one (the callback is also where handshakes
  are counted);
- clients subscribe (:meth:`WorkloadIdentity.subscribe`) and open new channels, draining the
  old ones (:meth:`mesh.channel.pool.EndpointPool.renew`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from mesh.connect.ca import ConnectCA, ConnectUnavailable, Leaf, Roots
from mesh.connect.spiffe import SpiffeId, server_name

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0
Listener = Callable[["Bundle"], None]


@dataclass(frozen=True)
class Bundle:
    """One consistent view: this workload's leaf and the roots to verify peers with."""

    leaf: Leaf
    roots: Roots

    @property
    def identity(self) -> SpiffeId:
        return SpiffeId.parse(self.leaf.uri)

    @property
    def trust_domain(self) -> str:
        return self.roots.trust_domain

    def server_name(self, service: str) -> str:
        """The name a server of ``service`` presents (what a client verifies it by)."""
        return server_name(service, self.roots.trust_domain)

    def server_configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.leaf.key_pem.encode(), self.leaf.cert_pem.encode())],
            root_certificates=self.roots.pem.encode(),
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.roots.pem.encode(),
            private_key=self.leaf.key_pem.encode(),
            certificate_chain=self.leaf.cert_pem.encode(),
        )


class WorkloadIdentity:
    """The identity of service ``service``, from the agent ``ca`` talks to."""

    def __init__(self, service: str, ca: ConnectCA, *, wait: float = 30.0) -> None:
        self.service = service
        self.handshakes = 0  # TLS handshakes the server credentials have served
        self._ca = ca
        self._wait = wait
        self._leaf: Leaf | None = None
        self._roots: Roots | None = None
        self._bundle: Bundle | None = None
        self._served: Bundle | None = None  # the bundle the server credentials last handed gRPC
        self._listeners: list[Listener] = []
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def bundle(self) -> Bundle:
        """The current bundle; :meth:`start` must have returned."""
        if self._bundle is None:
            raise RuntimeError(f"identity of {self.service!r} not started")
        return self._bundle

    async def start(self, start_within: float = 30.0) -> WorkloadIdentity:
        """Fetch the first leaf and roots (retrying an absent agent up to ``start_within`` s), then follow."""
        leaf_index, roots_index = await self._first(start_within)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._follow_leaf(leaf_index), name=f"connect-leaf-{self.service}"),
            loop.create_task(self._follow_roots(roots_index), name=f"connect-roots-{self.service}"),
        ]
        log.info(
            "workload identity ready",
            extra={
                "event": "identity_ready",
                "identity": self.bundle.leaf.uri,
                "serial": self.bundle.leaf.serial,
            },
        )
        return self

    async def _first(self, start_within: float) -> tuple[str, str]:
        deadline = asyncio.get_running_loop().time() + start_within
        while True:
            try:
                roots_index, self._roots = await self._ca.roots()
                leaf_index, self._leaf = await self._ca.leaf(self.service)
                self._rebuild()
                return leaf_index, roots_index
            except ConnectUnavailable as error:
                if error.refused or asyncio.get_running_loop().time() + RETRY_SECONDS > deadline:
                    raise ConnectUnavailable(f"no certificate for {self.service!r}: {error.detail}") from None
                log.warning("waiting for a certificate for %r: %s", self.service, error.detail)
                await asyncio.sleep(RETRY_SECONDS)

    async def _follow_leaf(self, index: str) -> None:
        while True:
            try:
                new_index, leaf = await self._ca.leaf(self.service, index=index, wait=self._wait)
            except ConnectUnavailable as error:
                log.warning("following the leaf of %r: %s; retrying", self.service, error.detail)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if leaf.serial != (self._leaf.serial if self._leaf else None):
                self._leaf = leaf
                self._rebuild()
            index = new_index or index

    async def _follow_roots(self, index: str) -> None:
        while True:
            try:
                new_index, roots = await self._ca.roots(index=index, wait=self._wait)
            except ConnectUnavailable as error:
                log.warning("following the CA roots: %s; retrying", error.detail)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if roots != self._roots:
                self._roots = roots
                self._rebuild()
            index = new_index or index

    def _rebuild(self) -> None:
        assert self._leaf is not None and self._roots is not None
        first = self._bundle is None
        self._bundle = Bundle(self._leaf, self._roots)
        if first:
            return
        log.info(
            "workload identity renewed",
            extra={"event": "identity_renewed", "serial": self._leaf.serial, "roots": self._roots.count},
        )
        for listener in list(self._listeners):
            try:
                listener(self._bundle)
            except Exception:
                log.exception("an identity listener failed")

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every new bundle; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials requiring a client certificate chained to the current roots."""
        self._served = self.bundle
        return grpc.dynamic_ssl_server_credentials(
            self._served.server_configuration(), self._fetch, require_client_authentication=True
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC (on its own thread) at every new handshake: None keeps the config.
        self.handshakes += 1
        current = self._bundle
        if current is None or current is self._served:
            return None
        self._served = current
        return current.server_configuration()

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._ca.close()
