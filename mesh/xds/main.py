"""``mesh xds``: the control plane process, wired from its settings.

What runs, in start order: the Consul follower (:mod:`mesh.xds.catalog`); the Connect trust
domain and datacenter for the resources' TLS (unless ``MESH_INSECURE=1``); the client
certificate files (with ``--client-identity``); the builder, which turns each published
snapshot into resources once for all clients (:func:`mesh.xds.resources.build_resources`);
the HTTP admin endpoint; the ADS server, a :class:`~mesh.server.MeshServer` without TLS (the
bootstrap dials it with insecure channel credentials on loopback) that serves grpc.health.v1
and reflection and registers itself in Consul as ``xds`` with ``admin_port`` in its meta;
then the bootstrap file. SIGTERM/SIGINT stop it in reverse: deregister, end the ADS streams
(clients keep their config and reconnect), drain, close. SIGHUP reads the policy file (and its
``MESH_POLICY__`` overrides) again and rebuilds: an operator changes retries or balancing
without dropping a client stream, and a file that no longer validates is refused with the
key's path in the log while the last good policy keeps being served.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mesh.config import ServerSettings
from mesh.connect.ca import ConnectCA, ConnectUnavailable
from mesh.errors import ConfigError, MeshError
from mesh.logs.setup import configure_logging
from mesh.registry.consul import ConsulRegistrar
from mesh.resilience.policy_config import PolicySettings, policy_from_env
from mesh.server import BoundServer, HostedService, MeshServer
from mesh.server.signals import install_stop_signals
from mesh.xds.admin import AdminServer
from mesh.xds.bootstrap import CertificatePaths, bootstrap_document, write_bootstrap
from mesh.xds.catalog import CatalogFollower, ConsulCatalogReader
from mesh.xds.client_files import ClientCertificateFiles
from mesh.xds.resources import XdsSecurity, build_resources
from mesh.xds.server import ADS_SERVICE, AggregatedDiscoveryService, ResourceCache, add_to_server
from mesh.xds.settings import SERVICE_NAME, XdsSettings, add_arguments, xds_settings

log = logging.getLogger(__name__)

SETTLE_SECONDS = 0.05  # one rebuild for a burst of health answers (the first catalog read)
START_WITHIN = 30.0


@dataclass(frozen=True)
class AgentFacts:
    """What the local agent says of itself: datacenter and node (empty when ACLs hide them)."""

    datacenter: str
    node: str


async def agent_facts(reader: ConsulCatalogReader) -> AgentFacts:
    """The agent's datacenter and node; the first datacenter if ``/v1/agent/self`` is refused."""
    try:
        datacenter, node = await reader.agent_self()
        return AgentFacts(datacenter, node)
    except MeshError as error:
        log.info("the agent did not say who it is (%s); taking the nearest datacenter", error)
    datacenters = await reader.datacenters()
    return AgentFacts(datacenters[0] if datacenters else "", "")


async def trust_domain(settings: XdsSettings) -> str:
    """The Connect CA's trust domain, waiting up to START_WITHIN for an agent still starting."""
    ca = ConnectCA(settings.consul_address, token=settings.consul_token)
    deadline = asyncio.get_running_loop().time() + START_WITHIN
    try:
        while True:
            try:
                _, roots = await ca.roots()
                return roots.trust_domain
            except ConnectUnavailable as error:
                if error.refused or asyncio.get_running_loop().time() > deadline:
                    raise ConfigError(
                        f"mesh xds serves mTLS resources and needs the Connect CA: {error.detail} "
                        "(MESH_INSECURE=1 serves plaintext resources)"
                    ) from None
                log.warning("waiting for the Connect CA roots: %s", error.detail)
                await asyncio.sleep(1.0)
    finally:
        await ca.close()


class StreamCloser:
    """A lifecycle hook ending every ADS stream once the registration is withdrawn.

    ADS streams never end on their own, so a drain would always last the whole grace period.
    """

    def __init__(self, ads: AggregatedDiscoveryService) -> None:
        self._ads = ads

    async def on_started(self, server: BoundServer) -> None:
        return None

    async def on_stopping(self) -> None:
        self._ads.close_streams()


class XdsProcess:
    """Every part of a running ``mesh xds``; :meth:`start` it, then :meth:`stop` it."""

    def __init__(self, settings: XdsSettings) -> None:
        self.settings = settings
        self.reader = ConsulCatalogReader(settings.consul_address, token=settings.consul_token)
        self.follower = CatalogFollower(self.reader, wait=settings.consul_wait, stale=settings.stale)
        self.cache = ResourceCache()
        self.ads = AggregatedDiscoveryService(self.cache)
        self.admin = AdminServer(
            {"/clients": self.ads.clients.as_list, "/healthz": self.health, "/resources": self.resources}
        )
        self.security: XdsSecurity | None = None
        self.policy: PolicySettings = settings.policy
        self._policy_read = asyncio.Event()
        self.certificates: ClientCertificateFiles | None = None
        self.server: MeshServer | None = None
        self.facts = AgentFacts("", "")
        self.builds = 0
        self.stopped = asyncio.Event()
        self._builder: asyncio.Task[None] | None = None

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "ready": self.cache.ready,
            "catalog_version": self.follower.version,
            "resources_version": self.cache.version,
            "services": len(self.follower.snapshot.services),
            "clients": len(self.ads.clients),
            "mtls": self.security is not None,
        }

    def resources(self) -> dict[str, Any]:
        return {"version": self.cache.version, "types": self.cache.summary()}

    async def start(self) -> None:
        settings = self.settings
        await self.follower.start()
        self.facts = await self._facts()
        if not settings.insecure:
            domain = await trust_domain(settings)
            self.security = XdsSecurity(trust_domain=domain, datacenter=self.facts.datacenter)
        if settings.certificates_dir is not None:
            self.certificates = ClientCertificateFiles(
                settings.client_identity,
                settings.consul_address,
                settings.client_token,
                settings.certificates_dir,
            )
            await self.certificates.start(START_WITHIN)
        self._builder = asyncio.get_running_loop().create_task(self._build_loop(), name="xds-build")
        admin_port = await self.admin.start(settings.host, settings.admin_port)
        registrar = ConsulRegistrar(settings.consul_address, token=settings.consul_token)
        self.server = MeshServer(
            ServerSettings(
                SERVICE_NAME, settings.port, host=settings.host, grace_seconds=settings.grace_seconds
            ),
            [HostedService(ADS_SERVICE, lambda server: add_to_server(self.ads, server))],
            hooks=[StreamCloser(self.ads), registrar],
            meta={"admin_port": str(admin_port), "resources_mtls": "off" if self.security is None else "on"},
        )
        await self.server.start()  # PortUnavailable (an OSError naming the address) when taken
        if settings.bootstrap_out is not None:
            self._write_bootstrap()

    async def _facts(self) -> AgentFacts:
        try:
            return await agent_facts(self.reader)
        except MeshError as error:
            log.warning("could not ask the agent its datacenter: %s", error)
            return AgentFacts("", "")

    def _write_bootstrap(self) -> None:
        settings = self.settings
        assert settings.bootstrap_out is not None and self.server is not None
        directory = settings.certificates_dir
        locality = {"region": self.facts.datacenter, "zone": self.facts.node}
        document = bootstrap_document(
            f"{settings.host}:{self.server.port}",
            node_id=settings.node_id,
            locality={key: value for key, value in locality.items() if value},
            certificates=CertificatePaths.in_directory(directory) if directory is not None else None,
        )
        write_bootstrap(settings.bootstrap_out, document)

    def reload_policy(self) -> None:
        """Read the policy again (SIGHUP); a policy that does not validate leaves the last one."""
        try:
            policy = policy_from_env(os.environ)
        except ConfigError as error:
            log.error(
                "the policy file was read again and refused; serving the last good policy: %s",
                error,
                extra={"event": "xds_policy_refused"},
            )
            return
        self.policy = policy
        self._policy_read.set()
        log.info("the policy file was read again", extra={"event": "xds_policy_read"})

    async def _next_change(self, seen: int) -> None:
        """Until the follower publishes a snapshot newer than ``seen`` or the policy is read again."""
        newer = asyncio.ensure_future(self.follower.wait_newer(seen))
        policy = asyncio.ensure_future(self._policy_read.wait())
        try:
            await asyncio.wait({newer, policy}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            newer.cancel()
            policy.cancel()
        self._policy_read.clear()

    async def _build_loop(self) -> None:
        """One rebuild per published snapshot or policy (a burst of them settles into one)."""
        seen = 0
        while True:
            await self._next_change(seen)
            if self.follower.version == 0:  # a policy read before Consul's first answer: nothing to build
                continue
            await asyncio.sleep(SETTLE_SECONDS)
            seen = self.follower.version
            try:
                built = build_resources(self.follower.snapshot, self.policy, self.security)
            except Exception:
                log.exception("building the xDS resources failed; serving the last ones")
                continue
            self.builds += 1
            if self.cache.update(built.resources):
                log.info(
                    "xds resources updated",
                    extra={
                        "event": "xds_resources",
                        "version": self.cache.version,
                        "services": sorted(self.follower.snapshot.services),
                    },
                )

    def serving_line(self) -> str:
        assert self.server is not None
        where = str(self.settings.bootstrap_out) if self.settings.bootstrap_out is not None else "not written"
        return (
            f"xds  serving on {self.settings.host}:{self.server.port}, "
            f"admin http://{self.settings.host}:{self.admin.port}, bootstrap {where}"
        )

    async def stop(self) -> None:
        """Deregister, end the streams, drain; then stop following Consul."""
        try:
            if self.server is not None:
                await self.server.stop()
            await self.close()
        finally:
            self.stopped.set()

    async def close(self) -> None:
        if self._builder is not None:
            self._builder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._builder
        await self.admin.close()
        if self.certificates is not None:
            await self.certificates.close()
        await self.follower.close()


async def run(settings: XdsSettings) -> None:
    """Run ``mesh xds`` until SIGTERM/SIGINT."""
    process = XdsProcess(settings)
    try:
        await process.start()
    except BaseException:
        if process.server is not None:
            await process.server.stop(0)
        await process.close()
        raise
    install_stop_signals(asyncio.get_running_loop(), process.stop)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, process.reload_policy)
    print(process.serving_line(), flush=True)
    await process.stopped.wait()


def run_command(options: argparse.Namespace) -> int:
    """The ``mesh xds`` command body (also ``python -m mesh.xds``)."""
    try:
        settings = xds_settings(os.environ, options)
    except ConfigError as error:
        print(f"mesh xds: {error}", file=sys.stderr)
        return 2
    configure_logging(SERVICE_NAME, settings.log_level)
    try:
        asyncio.run(run(settings))
    except (ConfigError, ConnectUnavailable, OSError) as error:
        print(f"mesh xds: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mesh xds", description="xDS control plane fed by Consul")
    add_arguments(parser)
    return run_command(parser.parse_args(argv))
