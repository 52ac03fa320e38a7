"""The gRPC xDS bootstrap ``mesh xds`` writes for local clients: its JSON shape and how it is written."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from mesh.xds.bootstrap import CertificatePaths, bootstrap_document, write_bootstrap


def test_a_plaintext_bootstrap_names_the_server_the_v3_feature_and_the_node() -> None:
    document = bootstrap_document("127.0.0.1:18000", locality={"region": "dc1", "zone": "node-a"})
    assert document == {
        "xds_servers": [
            {
                "server_uri": "127.0.0.1:18000",
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],  # grpcio 1.85 needs it to speak v3
            }
        ],
        "node": {"id": "local-client", "cluster": "", "locality": {"region": "dc1", "zone": "node-a"}},
    }


def test_client_certificates_add_a_file_watcher_provider_named_mesh(tmp_path: Path) -> None:
    paths = CertificatePaths.in_directory(tmp_path / "certs")
    document = bootstrap_document("127.0.0.1:1", node_id="shop-cli", cluster="cli", certificates=paths)
    assert document["node"] == {"id": "shop-cli", "cluster": "cli"}  # no locality given: none written
    assert document["certificate_providers"] == {
        "mesh": {
            "plugin_name": "file_watcher",
            "config": {
                "certificate_file": str(tmp_path / "certs" / "cert.pem"),
                "private_key_file": str(tmp_path / "certs" / "key.pem"),
                "ca_certificate_file": str(tmp_path / "certs" / "ca.pem"),
                "refresh_interval": "10s",
            },
        }
    }


def test_relative_certificate_paths_are_written_absolute() -> None:
    document = bootstrap_document("127.0.0.1:1", certificates=CertificatePaths.in_directory(Path("certs")))
    config = document["certificate_providers"]["mesh"]["config"]
    assert all(Path(config[key]).is_absolute() for key in ("certificate_file", "private_key_file"))


def test_the_file_is_replaced_whole_and_readable_by_all(tmp_path: Path) -> None:
    path = tmp_path / "run" / "xds-bootstrap.json"
    write_bootstrap(path, bootstrap_document("127.0.0.1:1"))
    write_bootstrap(path, bootstrap_document("127.0.0.1:2"))
    assert json.loads(path.read_text())["xds_servers"][0]["server_uri"] == "127.0.0.1:2"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["xds-bootstrap.json"]  # no temporary left
