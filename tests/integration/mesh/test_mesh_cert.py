"""``mesh cert`` against a real Consul agent: the files a tool needs, the key private to its owner,
and a clear refusal when Connect cannot give a certificate."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509

from mesh.cli import main
from mesh.connect.cert_files import fetch_certificate, write_certificate
from mesh.registry.dev_agent import ConsulDevAgent


def test_writes_a_certificate_key_and_ca_bundle_for_a_client_identity(
    consul_agent: ConsulDevAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    assert main(["cert", "--client", "cli", "--out", str(out), "--consul", consul_agent.http_addr]) == 0
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    [uri] = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uri.startswith("spiffe://") and uri.endswith("/svc/cli")
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    roots = x509.load_pem_x509_certificates((out / "ca.pem").read_bytes())
    assert cert.issuer in {root.subject for root in roots}
    assert "/svc/cli" in capsys.readouterr().out


def test_says_what_is_wrong_when_no_agent_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["cert", "order", "--out", str(tmp_path / "x"), "--consul", "http://127.0.0.1:9"])
    assert code == 2
    assert "consul connect is unavailable" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


async def test_rewriting_over_a_readable_key_file_leaves_it_private(
    consul_agent: ConsulDevAgent, tmp_path: Path
) -> None:
    out = tmp_path / "order"
    out.mkdir()
    (out / "key.pem").write_text("old")
    (out / "key.pem").chmod(0o644)  # a key someone copied in by hand
    leaf, roots = await fetch_certificate("order", consul_agent.http_addr, "")
    files = write_certificate(leaf, roots, out)
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert files.key.read_text() == leaf.key_pem and files.cert.read_text() == leaf.cert_pem
    assert files.identity == leaf.uri and files.identity.endswith("/svc/order")
    assert files.server_names == f"<service>.svc.default.{roots.trust_domain[:8]}.consul"
