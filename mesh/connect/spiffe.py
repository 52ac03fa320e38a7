"""SPIFFE IDs as Consul Connect issues them, and the name a client verifies a server by.

A Consul leaf certificate's only SAN is the URI
``spiffe://<trust-domain>/ns/<namespace>/dc/<datacenter>/svc/<service>``; its CN is
``<service>.svc.<namespace>.<first 8 characters of the trust domain>.consul``, where Consul
writes the service's name lower-cased, with every character other than ``a-z`` and ``0-9``
removed, and cut so the whole CN fits in 64 characters (``inventory-v2`` becomes
``inventoryv2``). gRPC for
Python offers no callback to check a URI SAN on the client side, but it checks the server's
name against the CN when a certificate has no DNS SAN: a client sets
``grpc.ssl_target_name_override`` to :func:`server_name` of the service it asked for, so a
certificate the CA issued to any other service fails the handshake.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

SCHEME = "spiffe"
# What Consul's CA keeps of a service's name in a CN, and the longest CN it writes (RFC 5280's
# upper bound for a common name).
_NOT_IN_CN = re.compile(r"[^a-z0-9]")
MAX_CN_LENGTH = 64


@dataclass(frozen=True)
class SpiffeId:
    """One workload identity: a service in a namespace and datacenter of a trust domain."""

    trust_domain: str
    namespace: str
    datacenter: str
    service: str

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parse a Consul service URI; ValueError saying what is wrong otherwise."""
        parts = urlsplit(uri)
        if parts.scheme != SCHEME or not parts.netloc:
            raise ValueError(f"not a SPIFFE ID: {uri!r}")
        segments = parts.path.strip("/").split("/")
        if len(segments) != 6 or segments[0::2] != ["ns", "dc", "svc"] or not all(segments[1::2]):
            raise ValueError(f"not a Consul service identity (ns/<ns>/dc/<dc>/svc/<name>): {uri!r}")
        return cls(parts.netloc, segments[1], segments[3], segments[5])

    @property
    def uri(self) -> str:
        return f"{SCHEME}://{self.trust_domain}/ns/{self.namespace}/dc/{self.datacenter}/svc/{self.service}"

    def __str__(self) -> str:
        return self.uri


def server_name(service: str, trust_domain: str, namespace: str = "default") -> str:
    """The CN Consul's CA writes into ``service``'s leaf certificate (what a client verifies).

    Names that differ only in case or punctuation (``api-v2``, ``apiv2``) share a CN, so their
    certificates vouch for each other at the handshake: give services names that stay distinct
    once reduced to ``[a-z0-9]``.
    """
    suffix = f".svc.{namespace}.{trust_domain[:8]}.consul"
    kept = _NOT_IN_CN.sub("", service.lower())
    return kept[: max(0, MAX_CN_LENGTH - len(suffix))] + suffix
