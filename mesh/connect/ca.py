"""The local Consul agent's Connect endpoints: leaf certificates, CA roots, authorization.

Facts this leans on (Consul 1.8.7, checked against a real agent):

- ``GET /v1/agent/connect/ca/leaf/<service>`` returns an EC P-256 leaf (72 h) for that service,
  issued by the agent (which caches it and re-issues before expiry or after a CA rotation);
  ``/v1/agent/connect/ca/roots`` the trust domain and its roots. Both take blocking queries
  (``?index=&wait=``), which is how rotation is followed without polling.
- ``POST /v1/agent/connect/authorize`` answers from intentions whether ``ClientCertURI`` may
  call ``Target``; it does not verify the certificate (the TLS handshake has done that).
- ``GET /v1/connect/intentions`` lists every intention; its ``X-Consul-Index`` moves when one
  changes, so a blocking query on it is the signal that cached decisions are stale.
- With Connect disabled, the agent answers 500 "Connect must be enabled in order to use this
  endpoint"; with ACLs on, a token without ``service:write`` on the name gets 403.

Every failure is a :class:`ConnectUnavailable` whose message says what was asked, of which
agent, and what it answered; the ACL token is sent as ``X-Consul-Token`` and never logged.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp

from mesh.errors import DependencyUnavailable
from mesh.registry.consul_api import parse_address

CONNECT_DISABLED = "Connect must be enabled"


class ConnectUnavailable(DependencyUnavailable):
    """The agent did not give what mTLS needs (down, Connect off, or the ACL token refused)."""

    def __init__(self, detail: str, *, refused: bool = False) -> None:
        super().__init__("consul connect", detail)
        # True when asking again cannot help (Connect off, the token refused): start-up stops
        # at once instead of retrying until its time runs out.
        self.refused = refused


@dataclass(frozen=True)
class Leaf:
    """A leaf certificate and its private key, as the agent issued them (PEM)."""

    service: str
    cert_pem: str
    key_pem: str
    serial: str
    uri: str
    valid_before: str


@dataclass(frozen=True)
class Roots:
    """The CA roots a peer's certificate must chain to, and the trust domain they sign for."""

    trust_domain: str
    pem: str  # every root, and the intermediates a rotation cross-signs, concatenated
    count: int


@dataclass(frozen=True)
class Authorization:
    """The agent's answer: whether the call is allowed, why, and whether an intention matched."""

    allowed: bool
    reason: str
    matched: bool


class ConnectCA:
    """Typed calls to the agent's Connect API over one HTTP session (made in the running loop)."""

    def __init__(self, address: str, *, token: str = "", request_timeout: float = 5.0) -> None:
        host, port, scheme = parse_address(address)
        self.address = f"{scheme}://{host}:{port}"
        self._headers = {"X-Consul-Token": token} if token else {}
        self._timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def _call(
        self, what: str, method: str, path: str, *, index: str | None, wait: float, body: Any = None
    ) -> tuple[str, Any]:
        params = {"index": index, "wait": f"{wait:g}s"} if index and wait > 0 else {}
        # Consul adds up to wait/16 of jitter to a blocking query; allow for it and the network.
        limit = self._timeout + (wait * 1.1 if params else 0.0)
        try:
            async with asyncio.timeout(limit):
                async with self._client().request(
                    method, self.address + path, params=params, json=body
                ) as response:
                    text = await response.text()
                    if response.status != 200:
                        raise ConnectUnavailable(
                            _refusal(what, self.address, response.status, text),
                            refused=CONNECT_DISABLED in text or response.status == 403,
                        )
                    return response.headers.get("X-Consul-Index", ""), await response.json(content_type=None)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            raise ConnectUnavailable(f"{what} at {self.address}: {error!r}") from error

    async def leaf(self, service: str, *, index: str | None = None, wait: float = 0.0) -> tuple[str, Leaf]:
        """``service``'s leaf certificate; with ``index``, blocks up to ``wait`` s for a new one."""
        index_out, raw = await self._call(
            f"leaf certificate for {service!r}",
            "GET",
            f"/v1/agent/connect/ca/leaf/{service}",
            index=index,
            wait=wait,
        )
        return index_out, Leaf(
            service=str(raw["Service"]),
            cert_pem=str(raw["CertPEM"]),
            key_pem=str(raw["PrivateKeyPEM"]),
            serial=str(raw["SerialNumber"]),
            uri=str(raw["ServiceURI"]),
            valid_before=str(raw["ValidBefore"]),
        )

    async def roots(self, *, index: str | None = None, wait: float = 0.0) -> tuple[str, Roots]:
        """The CA roots; with ``index``, blocks up to ``wait`` s for a change (a rotation)."""
        index_out, raw = await self._call(
            "CA roots", "GET", "/v1/agent/connect/ca/roots", index=index, wait=wait
        )
        roots = raw.get("Roots") or []
        if not roots:
            raise ConnectUnavailable(f"the agent at {self.address} has no Connect CA roots yet")
        pem = "".join(
            _pem_line(cert)
            for root in roots
            for cert in (root["RootCert"], *(root.get("IntermediateCerts") or ()))
        )
        return index_out, Roots(trust_domain=str(raw["TrustDomain"]), pem=pem, count=len(roots))

    async def authorize(self, target: str, client_uri: str, client_serial: str) -> Authorization:
        """Whether the identity ``client_uri`` may call ``target``, by the intentions."""
        _, raw = await self._call(
            f"authorization of {client_uri} -> {target!r}",
            "POST",
            "/v1/agent/connect/authorize",
            index=None,
            wait=0.0,
            body={"Target": target, "ClientCertURI": client_uri, "ClientCertSerial": client_serial},
        )
        reason = str(raw.get("Reason", ""))
        return Authorization(bool(raw.get("Authorized")), reason, reason.startswith("Matched intention"))

    async def intention_sources(self, target: str) -> list[str]:
        """Services an intention names as a source for ``target`` (or for every service), sorted."""
        _, raw = await self._call("intentions", "GET", "/v1/connect/intentions", index=None, wait=0.0)
        return sorted(
            {
                str(row["SourceName"])
                for row in raw or ()
                if row.get("DestinationName") in (target, "*") and row.get("SourceName") != "*"
            }
        )

    async def intentions_index(self, *, index: str | None = None, wait: float = 0.0) -> str:
        """The intentions list's index; with ``index``, blocks up to ``wait`` s until one changes."""
        index_out, _ = await self._call("intentions", "GET", "/v1/connect/intentions", index=index, wait=wait)
        return index_out

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _pem_line(cert: str) -> str:
    return cert if cert.endswith("\n") else cert + "\n"


def _refusal(what: str, address: str, status: int, text: str) -> str:
    body = text.strip()[:200]
    if CONNECT_DISABLED in text:
        return (
            f"{what}: Connect is not enabled on the Consul agent at {address} "
            "(set `connect { enabled = true }` in its configuration; a dev agent has it)"
        )
    if status == 403:
        return (
            f"{what}: the Consul agent at {address} refused the ACL token (403 {body}); "
            "give this process a token with service:write on its own name "
            "(CONSUL_HTTP_TOKEN or CONSUL_HTTP_TOKEN_FILE)"
        )
    return f"{what}: the Consul agent at {address} answered {status}: {body}"
