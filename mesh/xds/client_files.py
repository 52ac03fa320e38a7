"""A client identity's certificate files, kept current for local xDS clients.

xDS clients get their mTLS certificate from a ``file_watcher`` certificate provider (see
:mod:`mesh.xds.bootstrap`): they cannot ask Consul themselves. This process fetches the leaf
of a client identity (``--client-identity cli``) with that identity's own ACL token, writes
``cert.pem``, ``key.pem`` (0600) and ``ca.pem``, and follows rotation with the blocking
queries of :class:`mesh.connect.workload.WorkloadIdentity`: each new leaf or roots set is
written again, and the watcher picks it up within its refresh interval.

Each file is replaced by a rename (written beside it first), so a client never reads a
truncated file; between two renames it may read a new key with the old certificate, which
the provider rejects and reads again at its next refresh.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from mesh.connect.ca import ConnectCA
from mesh.connect.cert_files import CertificateFiles, write_certificate
from mesh.connect.workload import Bundle, WorkloadIdentity

log = logging.getLogger(__name__)


def write_bundle(bundle: Bundle, directory: Path) -> CertificateFiles:
    """Write ``bundle``'s files into ``directory``, each by an atomic rename (key first)."""
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".certs-", dir=directory))
    try:
        staged = write_certificate(bundle.leaf, bundle.roots, staging)
        for name in ("key.pem", "cert.pem", "ca.pem"):
            os.replace(staging / name, directory / name)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    return CertificateFiles(
        staged.identity,
        directory / "cert.pem",
        directory / "key.pem",
        directory / "ca.pem",
        staged.valid_before,
        staged.server_names,
    )


class ClientCertificateFiles:
    """Keeps ``identity``'s certificate files in ``directory`` current until closed."""

    def __init__(self, identity: str, consul_address: str, token: str, directory: Path) -> None:
        self.identity = identity
        self.directory = directory
        self._workload = WorkloadIdentity(identity, ConnectCA(consul_address, token=token))
        self.writes = 0

    async def start(self, start_within: float = 30.0) -> CertificateFiles:
        """Fetch and write the first certificate (fails clearly if the agent refuses), then follow."""
        await self._workload.start(start_within)
        files = self._write(self._workload.bundle)
        self._workload.subscribe(self._rotated)
        return files

    def _rotated(self, bundle: Bundle) -> None:
        try:
            self._write(bundle)
        except OSError:
            log.exception("could not write the renewed client certificate into %s", self.directory)

    def _write(self, bundle: Bundle) -> CertificateFiles:
        files = write_bundle(bundle, self.directory)
        self.writes += 1
        log.info(
            "client certificate written",
            extra={
                "event": "xds_client_certificate",
                "identity": files.identity,
                "serial": bundle.leaf.serial,
                "valid_before": files.valid_before,
                "directory": str(self.directory),
            },
        )
        return files

    async def close(self) -> None:
        await self._workload.close()
