"""Client certificate files for xDS clients: written whole, the key 0600, renewals replacing them.

Following the agent (leaf and roots blocking queries) is WorkloadIdentity's, tested with
mesh/connect; a real agent writes them in tests/integration/xds.
"""

from __future__ import annotations

import stat
from pathlib import Path

from mesh.connect.ca import Leaf, Roots
from mesh.connect.workload import Bundle
from mesh.xds.client_files import ClientCertificateFiles, write_bundle

ROOTS = Roots("11111111-2222.consul", "ROOT PEM\n", 1)


def leaf(serial: str) -> Leaf:
    uri = "spiffe://11111111-2222.consul/ns/default/dc/dc1/svc/cli"
    return Leaf("cli", f"CERT {serial}\n", f"KEY {serial}\n", serial, uri, "2030-01-01T00:00:00Z")


def test_the_files_are_written_and_a_renewal_replaces_them(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    files = write_bundle(Bundle(leaf("01"), ROOTS), directory)
    assert files.cert.read_text() == "CERT 01\n" and files.ca.read_text() == "ROOT PEM\n"
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    write_bundle(Bundle(leaf("02"), ROOTS), directory)
    assert (directory / "cert.pem").read_text() == "CERT 02\n"
    assert (directory / "key.pem").read_text() == "KEY 02\n"
    assert sorted(p.name for p in directory.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]


def test_a_rotation_seen_by_the_follower_is_written(tmp_path: Path) -> None:
    files = ClientCertificateFiles("cli", "http://127.0.0.1:1", "", tmp_path)
    files._rotated(Bundle(leaf("07"), ROOTS))
    assert (tmp_path / "cert.pem").read_text() == "CERT 07\n" and files.writes == 1
