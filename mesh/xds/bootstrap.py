"""The gRPC xDS bootstrap file local clients read (``GRPC_XDS_BOOTSTRAP``).

Why a file written by the control plane: every xDS client (grpcio, grpc-js-xds, grpc-go,
grpc-java) finds its management server and its certificates through this one JSON format, so
the process that knows the port and the certificate directory writes it, atomically (a client
starting mid-write must never read half a file), mode 0644 (it holds paths, no secrets).

Facts this leans on: grpcio 1.85 speaks xDS v3 only when the server entry lists
``"server_features": ["xds_v3"]``; ``certificate_providers`` names instances of the
``file_watcher`` plugin, which re-reads the files every ``refresh_interval`` (that is how a
rotated certificate reaches the clients); the CDS resources name the instance (``mesh``).

One bootstrap serves every local client, so they share a node id (``local-client`` by
default); the server tells their streams apart by peer address (see ``/clients``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_NODE_ID = "local-client"
DEFAULT_PROVIDER = "mesh"


@dataclass(frozen=True)
class CertificatePaths:
    """The files a ``file_watcher`` certificate provider reads."""

    certificate_file: Path
    private_key_file: Path
    ca_certificate_file: Path

    @classmethod
    def in_directory(cls, directory: Path) -> CertificatePaths:
        """The names :func:`mesh.connect.cert_files.write_certificate` writes."""
        return cls(directory / "cert.pem", directory / "key.pem", directory / "ca.pem")


def bootstrap_document(
    server_uri: str,
    *,
    node_id: str = DEFAULT_NODE_ID,
    cluster: str = "",
    locality: dict[str, str] | None = None,
    certificates: CertificatePaths | None = None,
    provider_instance: str = DEFAULT_PROVIDER,
    refresh_interval: str = "10s",
) -> dict[str, Any]:
    """The bootstrap as JSON-ready data (certificate providers only with ``certificates``)."""
    node: dict[str, Any] = {"id": node_id, "cluster": cluster}
    if locality:
        node["locality"] = dict(locality)
    document: dict[str, Any] = {
        "xds_servers": [
            {
                "server_uri": server_uri,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": node,
    }
    if certificates is not None:
        document["certificate_providers"] = {
            provider_instance: {
                "plugin_name": "file_watcher",
                "config": {
                    "certificate_file": str(certificates.certificate_file.absolute()),
                    "private_key_file": str(certificates.private_key_file.absolute()),
                    "ca_certificate_file": str(certificates.ca_certificate_file.absolute()),
                    "refresh_interval": refresh_interval,
                },
            }
        }
    return document


def write_bootstrap(path: Path, document: dict[str, Any]) -> Path:
    """Write ``document`` to ``path`` atomically (a temporary file renamed over it), mode 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
