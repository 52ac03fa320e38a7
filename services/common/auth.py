"""The caller of an RPC: an end user by their verified bearer token, or a mesh service by its identity.

Services verify the JWT themselves (the gateway does too, with the same verifier:
mesh/verifier.py), so a direct gRPC call is held to the same rules as a REST one, and
ownership (a user sees only their own orders) is enforced where the data lives.

A service is never a token. The calling service is what the transport proves
(:func:`mesh.connect.peer.peer_service`: the SPIFFE ID of its mTLS client certificate, or its
``x-mesh-peer`` claim in the loud plaintext debugging mode ``MESH_INSECURE=1``). A call with
no bearer token from one of the process's trusted callers (``MESH_TRUSTED_CALLERS``, default
``order``) acts as the shop itself: a service principal ``service:<name>``, which may move
payments, stock and shipments for users. Any other service's call without a token is
anonymous, however it names itself.

:meth:`Authenticator.source` names the client a call comes from, for throttling: the
address the gateway forwards (``x-forwarded-client``) when, and only when, the call comes
from the gateway's identity; otherwise the gRPC peer's address. A direct caller who writes
``x-forwarded-client`` itself is throttled as the address it really calls from.
"""

from __future__ import annotations

import ipaddress

from mesh.connect.peer import peer_service
from mesh.identity import FORWARDED_CLIENT, SERVICE_ROLE, InvalidToken, Principal
from mesh.verifier import JwtVerifier
from services.common.context import Context
from services.common.errors import PermissionDenied, Unauthenticated

IPV6_PREFIX = 64  # one IPv6 client usually holds a whole /64: it is one source
GATEWAY = "gateway"  # the one mesh identity whose x-forwarded-client is believed


class Authenticator:
    """Reads the principal of a call; one per process, built from the JWT and mesh settings.

    ``insecure`` is the process's ``MESH_INSECURE`` (the peer's service then comes from its
    ``x-mesh-peer`` claim); ``trusted_callers`` the services that act as the shop itself.
    """

    def __init__(self, verifier: JwtVerifier, *, insecure: bool, trusted_callers: tuple[str, ...]) -> None:
        self._verifier = verifier
        self._insecure = insecure
        self._trusted = frozenset(trusted_callers)

    def peer(self, context: Context) -> str | None:
        """The calling service as the transport proves it (None: not a mesh service)."""
        return peer_service(context, self._insecure)  # under mTLS it reads context.auth_context()

    def optional(self, context: Context) -> Principal | None:
        """The caller, or None for an anonymous call; UNAUTHENTICATED for a bad token.

        A bearer token names the caller (an end user's call, forwarded or direct). Without
        one, a trusted caller's service is a service principal; anyone else is anonymous.
        """
        try:
            principal = self._verifier.from_metadata(context.invocation_metadata() or ())
        except InvalidToken as error:
            raise Unauthenticated(f"invalid bearer token: {error}") from None
        if principal is not None:
            return principal
        service = self.peer(context)
        if service is not None and service in self._trusted:
            return Principal(subject=f"service:{service}", roles=frozenset({SERVICE_ROLE}))
        return None

    def required(self, context: Context) -> Principal:
        """The caller; UNAUTHENTICATED when the call carries no valid token and no trusted identity."""
        principal = self.optional(context)
        if principal is None:
            raise Unauthenticated("this method needs 'authorization: Bearer <token>'")
        return principal

    def admin(self, context: Context) -> Principal:
        """The caller, who must hold the admin role (PERMISSION_DENIED otherwise)."""
        principal = self.required(context)
        if not principal.is_admin:
            raise PermissionDenied("this method is for admins only")
        return principal

    def service(self, context: Context) -> Principal:
        """The caller, who must be a trusted mesh service (or an admin): for the steps of an order.

        Customers may read their payments and shipments but never move them: a customer who
        could refund or cancel their own would keep the goods and the money.
        """
        principal = self.required(context)
        if not (principal.is_service or principal.is_admin):
            raise PermissionDenied("only the shop's services (or an admin) may call this method")
        return principal

    def source(self, context: Context) -> str:
        """The client a call comes from: the gateway's forwarded address, else the peer's."""
        metadata = context.invocation_metadata() or ()
        forwarded = [v for k, v in metadata if k.lower() == FORWARDED_CLIENT]
        if len(forwarded) == 1 and self.peer(context) == GATEWAY:
            value = forwarded[0]
            address = source_address(value.decode() if isinstance(value, bytes) else value)
            if address is not None:
                return address
        return peer_source(context.peer() or "")


def source_address(text: str) -> str | None:
    """An IP address as a throttling key (an IPv6 address as its /64); None if not one."""
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


def peer_source(peer: str) -> str:
    """The source of a gRPC peer string (``ipv4:1.2.3.4:5678``, ``ipv6:[::1]:5678``, ``unix:``)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rsplit(":", 1)[0] if kind == "ipv4" or rest.startswith("[") else rest
        address = source_address(host)
        if address is not None:
            return address
    return peer or "unknown"
