"""HTTPS at the edge from certificate files: a real self-signed certificate, real HTTPS requests.

``GATEWAY_TLS_CERT_FILE`` and ``GATEWAY_TLS_KEY_FILE`` (both or neither) turn the listener into
HTTPS; HTTP stays the default. A bad pair fails the start with the variable named.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import ipaddress
import json
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import __main__ as entry
from gateway.registration import GatewayRegistrar, gateway_instance
from gateway.settings import edge_tls_context, settings_from_env
from mesh.errors import ConfigError
from tests.unit.gateway.running import running_gateway


def self_signed(directory: Path, name: str = "edge") -> tuple[Path, Path]:
    """A fresh EC key and a self-signed certificate for localhost and 127.0.0.1, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def https_get(port: int, path: str, cafile: Path) -> tuple[int, bytes, str | None]:
    """One HTTPS request that verifies the gateway's certificate (chain and host name)."""
    context = ssl.create_default_context(cafile=str(cafile))
    connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        sock = connection.sock
        version = sock.version() if isinstance(sock, ssl.SSLSocket) else None
        return response.status, response.read(), version
    finally:
        connection.close()


def http_get(port: int, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


async def test_the_gateway_serves_https_from_certificate_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cert_file, key_file = self_signed(tmp_path)
    async with running_gateway(
        tmp_path, monkeypatch, caplog, tls_cert_file=str(cert_file), tls_key_file=str(key_file)
    ) as gateway:
        _, port = gateway.address
        assert gateway.listening.__dict__["scheme"] == "https"
        status, body, version = await asyncio.to_thread(https_get, port, "/openapi.json", cert_file)
        assert status == 200 and json.loads(body)["openapi"] == "3.1.0"
        assert version in ("TLSv1.2", "TLSv1.3")
        # Keep-alive and the rest of the HTTP rules are unchanged under TLS.
        assert (await asyncio.to_thread(https_get, port, "/nope", cert_file))[0] == 404
        # Plain HTTP on the HTTPS port gets no HTTP answer.
        with pytest.raises((http.client.HTTPException, OSError)):
            await asyncio.to_thread(http_get, port, "/openapi.json")
        # A client that does not trust the certificate refuses the connection.
        other, _ = self_signed(tmp_path, "other")
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.to_thread(https_get, port, "/openapi.json", other)


async def test_http_stays_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_gateway(tmp_path, monkeypatch, caplog) as gateway:
        _, port = gateway.address
        assert gateway.listening.__dict__["scheme"] == "http"
        assert await asyncio.to_thread(http_get, port, "/openapi.json") == 200


async def test_a_tls_handshake_must_finish_within_the_header_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection that never starts its handshake is closed, as a silent HTTP one is."""
    cert_file, key_file = self_signed(tmp_path)
    async with running_gateway(
        tmp_path,
        monkeypatch,
        caplog,
        tls_cert_file=str(cert_file),
        tls_key_file=str(key_file),
        header_timeout_seconds=0.3,
    ) as gateway:
        reader, writer = await asyncio.open_connection(*gateway.address)
        try:
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the gateway
        finally:
            writer.close()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"GATEWAY_TLS_CERT_FILE": "/x/cert.pem"}, "GATEWAY_TLS_KEY_FILE"),
        ({"GATEWAY_TLS_KEY_FILE": "/x/key.pem"}, "GATEWAY_TLS_CERT_FILE"),
    ],
)
def test_one_file_without_the_other_fails_naming_the_missing_variable(
    env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=f"^{named} must be set too"):
        settings_from_env(env)


def test_both_files_make_the_settings_https() -> None:
    settings = settings_from_env({"GATEWAY_TLS_CERT_FILE": "/x/c.pem", "GATEWAY_TLS_KEY_FILE": "/x/k.pem"})
    assert settings.https and (settings.tls_cert_file, settings.tls_key_file) == ("/x/c.pem", "/x/k.pem")
    assert not settings_from_env({}).https


def test_unusable_files_name_their_variable(tmp_path: Path) -> None:
    cert_file, key_file = self_signed(tmp_path)
    other_cert, other_key = self_signed(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a PEM\n")
    assert isinstance(edge_tls_context(str(cert_file), str(key_file)), ssl.SSLContext)
    with pytest.raises(ConfigError, match=r"^GATEWAY_TLS_CERT_FILE: cannot read"):
        edge_tls_context(str(tmp_path / "missing.pem"), str(key_file))
    with pytest.raises(ConfigError, match=r"^GATEWAY_TLS_KEY_FILE: cannot read"):
        edge_tls_context(str(cert_file), str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match=r"^GATEWAY_TLS_CERT_FILE: .* no PEM certificate"):
        edge_tls_context(str(garbage), str(key_file))
    with pytest.raises(ConfigError, match=r"^GATEWAY_TLS_KEY_FILE: .* no unencrypted PEM private key"):
        edge_tls_context(str(cert_file), str(other_cert))
    with pytest.raises(ConfigError, match=r"^GATEWAY_TLS_KEY_FILE does not match GATEWAY_TLS_CERT_FILE"):
        edge_tls_context(str(cert_file), str(other_key))


def test_an_unusable_certificate_exits_2_naming_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, key_file = self_signed(tmp_path)
    monkeypatch.delenv("GATEWAY_PORT", raising=False)
    monkeypatch.setenv("MESH_INSECURE", "1")
    monkeypatch.setenv("GATEWAY_TLS_CERT_FILE", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("GATEWAY_TLS_KEY_FILE", str(key_file))
    assert entry.main() == 2
    assert "GATEWAY_TLS_CERT_FILE" in capsys.readouterr().err


def test_consul_checks_an_https_gateway_over_https_without_verifying() -> None:
    instance = gateway_instance("10.0.0.7", 8443, 9180)
    check = GatewayRegistrar("http://127.0.0.1:1", https=True).check_for(instance)
    assert check["HTTP"] == "https://10.0.0.7:8443/readyz" and check["TLSSkipVerify"] is True
    plain = GatewayRegistrar("http://127.0.0.1:1").check_for(instance)
    assert plain["HTTP"].startswith("http://") and "TLSSkipVerify" not in plain
