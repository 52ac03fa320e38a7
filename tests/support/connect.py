"""Consul Connect for tests: intentions, a CA whose key the test holds, and certificates it mints.

A test that must present an expired certificate, or one from another CA, needs to sign one:
:func:`own_ca` makes a root key and certificate the test keeps, and :func:`use_ca` hands them
to the agent (``PUT /v1/connect/ca/configuration``), which is also how a root rotation is
forced (the agent then serves both roots and re-issues every leaf).
"""

from __future__ import annotations

import datetime
import json
import urllib.request
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mesh.registry.dev_agent import ConsulDevAgent


def consul_request(agent: ConsulDevAgent, method: str, path: str, body: object = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(agent.http_addr + path, data=data, method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"null")


def set_intention(agent: ConsulDevAgent, source: str, destination: str, action: str) -> str:
    """Create (or replace) the intention ``source -> destination``; returns its ID."""
    for intention in consul_request(agent, "GET", "/v1/connect/intentions") or []:  # type: ignore[union-attr]
        if intention["SourceName"] == source and intention["DestinationName"] == destination:
            consul_request(agent, "DELETE", f"/v1/connect/intentions/{intention['ID']}")
    created = consul_request(
        agent,
        "POST",
        "/v1/connect/intentions",
        {"SourceName": source, "DestinationName": destination, "Action": action},
    )
    assert isinstance(created, dict)
    return str(created["ID"])


@dataclass(frozen=True)
class OwnCA:
    """A CA the test holds the key of."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def key_pem(self) -> str:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def leaf(
        self, uri: str, common_name: str, *, not_before: datetime.datetime, not_after: datetime.datetime
    ) -> tuple[str, str]:
        """A leaf for ``uri`` signed by this CA, valid in the given window: (cert PEM, key PEM)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def own_ca(trust_domain: str) -> OwnCA:
    """A root CA for ``trust_domain`` (its URI SAN is the trust domain's SPIFFE ID, as Consul's)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Test CA {trust_domain[:8]}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return OwnCA(key, cert)


def use_ca(agent: ConsulDevAgent, ca: OwnCA) -> None:
    """Make ``ca`` the agent's active root (a rotation when another root was active)."""
    consul_request(
        agent,
        "PUT",
        "/v1/connect/ca/configuration",
        {"Provider": "consul", "Config": {"PrivateKey": ca.key_pem, "RootCert": ca.cert_pem}},
    )


def trust_domain(agent: ConsulDevAgent) -> str:
    roots = consul_request(agent, "GET", "/v1/agent/connect/ca/roots")
    assert isinstance(roots, dict)
    return str(roots["TrustDomain"])
