"""``mesh cert``: a workload's certificate, key and CA bundle written to files, for tools.

grpcurl, curl or a debugger cannot ask Consul for a certificate themselves. This fetches the
leaf of a name (a service, or a client identity such as ``cli`` that intentions let call the
shop) with the caller's ACL token and writes ``cert.pem``, ``key.pem`` (mode 0600) and
``ca.pem``. The certificate lives 72 h and is not renewed: fetch again when it expires or
after a CA rotation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mesh.connect.ca import ConnectCA, Leaf, Roots


@dataclass(frozen=True)
class CertificateFiles:
    """Where one identity's files were written, and what they hold."""

    identity: str
    cert: Path
    key: Path
    ca: Path
    valid_before: str
    server_names: str  # the CN pattern of the mesh's servers, for a tool's name override


async def fetch_certificate(name: str, consul_address: str, token: str) -> tuple[Leaf, Roots]:
    """``name``'s leaf and the roots, from the agent at ``consul_address``."""
    ca = ConnectCA(consul_address, token=token)
    try:
        _, roots = await ca.roots()
        _, leaf = await ca.leaf(name)
    finally:
        await ca.close()
    return leaf, roots


def write_certificate(leaf: Leaf, roots: Roots, directory: Path) -> CertificateFiles:
    """Write ``leaf`` (its key 0600) and the CA bundle under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, bundle = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
    cert.write_text(leaf.cert_pem)
    bundle.write_text(roots.pem)
    descriptor = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(leaf.key_pem)
    os.chmod(key, 0o600)  # an existing file keeps its mode through O_CREAT
    return CertificateFiles(
        leaf.uri,
        cert,
        key,
        bundle,
        leaf.valid_before,
        f"<service>.svc.default.{roots.trust_domain[:8]}.consul",
    )
