"""The MeshChannel: the grpc.aio.Channel surface generated stubs call, and its multicallables."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Literal

import grpc
import grpc.aio

from mesh.balancer.base import Balancer
from mesh.balancer.outlier import OutlierBalancer, OutlierDetector, OutlierPolicy
from mesh.balancer.p2c import PowerOfTwoChoices
from mesh.balancer.round_robin import RoundRobin
from mesh.channel.pool import EndpointPool
from mesh.channel.resilience import Resilience
from mesh.channel.spec import CallSpec
from mesh.channel.stream_request import MeshStreamRequestCall
from mesh.channel.unary import MeshUnaryUnaryCall
from mesh.channel.unary_stream import MeshUnaryStreamCall
from mesh.connect.workload import Bundle, WorkloadIdentity
from mesh.deadline import call_deadline
from mesh.observer import CallObserver, ChannelObservers
from mesh.registry.base import Discovery, Endpoints, ServiceInstance
from mesh.resilience import PolicySettings, ServicePolicy

BalancerName = Literal["p2c", "p2c_ewma", "round_robin"]

# Each per-endpoint channel gets its own subchannel, so a new channel to an address that was
# down starts with a fresh connection attempt instead of inheriting a shared reconnect backoff.
_DEFAULT_OPTIONS: tuple[tuple[str, Any], ...] = (("grpc.use_local_subchannel_pool", 1),)

ENVOY_OUTLIER = OutlierPolicy()  # frozen: safe to share as a default

# go-grpc-prometheus's words for the call types, used by metrics and spans alike.
_CALL_TYPES = {
    "unary_unary": "unary",
    "unary_stream": "server_stream",
    "stream_unary": "client_stream",
    "stream_stream": "bidi_stream",
}


CallClass = type[MeshUnaryUnaryCall] | type[MeshUnaryStreamCall] | type[MeshStreamRequestCall]


class _MultiCallable:
    """What ``channel.unary_unary(path, …)`` returns: a new mesh call per invocation.

    One signature serves every call type: grpc's unary multicallables take the request
    positionally and the rest by keyword, the streaming ones all positionally; this
    accepts both.
    """

    __slots__ = ("_call_class", "_spec")

    def __init__(self, spec: CallSpec, call_class: CallClass) -> None:
        self._spec = spec
        self._call_class = call_class

    def __call__(
        self,
        request: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> Any:
        spec = self._spec
        if not spec.pool.running:
            spec.pool.ensure_started()
        deadline = call_deadline(timeout, spec.policy.timeout)
        return self._call_class(spec, request, deadline, metadata, wait_for_ready, credentials, compression)


def _stub_method(kind: str, call_class: CallClass, doc: str) -> Callable[..., _MultiCallable]:
    """One of the four ``grpc.aio.Channel`` methods generated stubs call at construction."""

    def method(
        self: MeshChannel,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
        **_: Any,
    ) -> _MultiCallable:
        spec = self._spec(kind, method, request_serializer, response_deserializer, _registered_method)
        return _MultiCallable(spec, call_class)

    method.__name__ = kind
    method.__doc__ = doc
    return method


class MeshChannel:
    """Duck-types ``grpc.aio.Channel`` over every healthy endpoint of one service.

    ``max_attempts`` bounds transparent failover (transport failures only); calls with
    nothing to pick fail with UNAVAILABLE ``no healthy endpoint for 'name'`` at once, or wait
    (up to their deadline) when made with ``wait_for_ready=True``. Before the registry first
    answers, calls wait up to ``resolve_timeout``.

    ``policy`` (the process's :class:`PolicySettings`, or this service's
    :class:`ServicePolicy`) sets default timeouts, retries (off unless configured), the
    breakers and the retry budget; :attr:`resilience` holds their state and the transition
    listeners. Calls made while a server handles a request never outlive its deadline.

    ``observers`` (:mod:`mesh.observer`; the process's Telemetry gives them) see every call
    and attempt from the call objects themselves: client metrics and spans without a grpc.aio
    interceptor. ``interceptors`` still go on every per-endpoint channel, for users who
    bring their own.
    """

    def __init__(
        self,
        name: str,
        discovery: Discovery,
        *,
        balancer: Balancer | None = None,
        tags: tuple[str, ...] = (),
        interceptors: Sequence[Any] = (),
        options: Sequence[tuple[str, Any]] = (),
        credentials: grpc.ChannelCredentials | None = None,
        max_attempts: int = 3,
        resolve_timeout: float = 3.0,
        drain_seconds: float = 30.0,
        policy: PolicySettings | ServicePolicy | None = None,
        observers: Sequence[CallObserver] = (),
        identity: WorkloadIdentity | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.name = name
        self.max_attempts = max_attempts
        self.resolve_timeout = resolve_timeout
        self._interceptors = list(interceptors)
        self._options = list(_DEFAULT_OPTIONS) + list(options)
        self._credentials = credentials
        if isinstance(policy, PolicySettings):
            policy = policy.service(name)
        self.resilience = Resilience(name, policy)
        self._pool = EndpointPool(
            name,
            lambda: discovery.watch(name),
            balancer or OutlierBalancer(PowerOfTwoChoices()),
            self._open_channel,
            tags=tags,
            drain_seconds=drain_seconds,
            on_leave=self.resilience.forget,
        )
        self._observers = ChannelObservers(self, observers)
        self._identity = identity
        # The leaf this channel's connections present; renewed when the identity's changes.
        self._presented = identity.bundle.leaf.serial if identity is not None else ""
        self._unsubscribe = identity.subscribe(self._renewed) if identity is not None else None

    def _renewed(self, bundle: Bundle) -> None:
        # A new leaf: new calls go over new connections that present it, while those already
        # open on the old one finish (the pool drains them): one handshake per endpoint. New
        # roots alone renew nothing: after a rotation Consul sends each new leaf with the new
        # root cross-signed by the old, so today's connections still verify a server's new
        # leaf when they reconnect, and every connection opened from now on takes the current
        # bundle anyway.
        if bundle.leaf.serial == self._presented:
            return
        self._presented = bundle.leaf.serial
        if self._pool.running:
            self._pool.renew()

    def _open_channel(self, instance: ServiceInstance) -> Any:
        interceptors = self._interceptors or None
        if self._identity is not None:
            # mTLS: present this workload's certificate and accept only a server holding the
            # identity of the service asked for (its CN, see mesh.connect.spiffe).
            bundle = self._identity.bundle
            options = [*self._options, ("grpc.ssl_target_name_override", bundle.server_name(self.name))]
            return grpc.aio.secure_channel(
                instance.target, bundle.channel_credentials(), options=options, interceptors=interceptors
            )
        if self._credentials is not None:
            return grpc.aio.secure_channel(
                instance.target, self._credentials, options=self._options, interceptors=interceptors
            )
        return grpc.aio.insecure_channel(instance.target, options=self._options, interceptors=interceptors)

    def _spec(self, kind: str, method: str, serializer: Any, deserializer: Any, registered: Any) -> CallSpec:
        return CallSpec(
            self._pool,
            kind,
            method,
            serializer,
            deserializer,
            bool(registered),
            self.max_attempts,
            self.resolve_timeout,
            self.resilience,
            self._observers.for_method(
                method.decode() if isinstance(method, bytes) else method, _CALL_TYPES[kind]
            ),
        )

    # -- the grpc.aio.Channel surface ------------------------------------------------------

    unary_unary = _stub_method(
        "unary_unary", MeshUnaryUnaryCall, "A multicallable choosing an endpoint per call, with failover."
    )
    unary_stream = _stub_method(
        "unary_stream",
        MeshUnaryStreamCall,
        "A multicallable choosing an endpoint per call, failing over before the first message.",
    )
    stream_unary = _stub_method(
        "stream_unary",
        MeshStreamRequestCall,
        "A multicallable choosing an endpoint per call (no failover: requests are not replayable).",
    )
    stream_stream = _stub_method(
        "stream_stream",
        MeshStreamRequestCall,
        "A multicallable choosing an endpoint per call (no failover: requests are not replayable).",
    )

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        """The best state among the endpoint channels (READY if any is READY)."""
        order = [
            grpc.ChannelConnectivity.READY,
            grpc.ChannelConnectivity.CONNECTING,
            grpc.ChannelConnectivity.IDLE,
            grpc.ChannelConnectivity.TRANSIENT_FAILURE,
        ]
        states = {channel.get_state(try_to_connect) for channel in self._pool.channels()}
        for state in order:
            if state in states:
                return state
        return grpc.ChannelConnectivity.IDLE

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        """Return once :meth:`get_state` differs from ``last_observed_state``."""
        self._pool.ensure_started()
        while self.get_state() == last_observed_state:
            await self._pool.wait_changed(self._pool.version, 0.1)

    async def channel_ready(self) -> None:
        """Wait until at least one endpoint channel is READY."""
        while self.get_state(try_to_connect=True) != grpc.ChannelConnectivity.READY:
            await self.wait_for_state_change(self.get_state())

    async def close(self, grace: float | None = None) -> None:
        """Stop watching and close every endpoint channel (letting calls finish within ``grace``)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        await self._pool.close(grace)

    async def __aenter__(self) -> MeshChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close(None)

    # -- mesh extras -----------------------------------------------------------------------

    @property
    def endpoints(self) -> Endpoints:
        """The endpoints calls are spread over right now."""
        return self._pool.endpoints

    def start(self) -> None:
        """Start following discovery now instead of at the first call (needs a running loop).

        Readiness checks use it: a process can report ready once endpoints are known,
        before any call has been made.
        """
        self._pool.ensure_started()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (a metrics collector then stops reading it)."""
        return self._pool.closed

    @property
    def balancer(self) -> Balancer:
        """The balancer choosing among the endpoints."""
        return self._pool.balancer

    async def wait_for_endpoints(self, count: int = 1, within: float | None = None) -> Endpoints:
        """Wait up to ``within`` seconds for at least ``count`` endpoints; TimeoutError otherwise."""
        self._pool.ensure_started()
        async with asyncio.timeout(within):
            while len(self._pool.endpoints) < count:
                await self._pool.wait_changed(self._pool.version, None)
        return self._pool.endpoints


def make_balancer(kind: BalancerName = "p2c", outlier: OutlierPolicy | None = ENVOY_OUTLIER) -> Balancer:
    """A balancer by name, wrapped in outlier ejection unless ``outlier`` is None."""
    inner: Balancer
    if kind == "round_robin":
        inner = RoundRobin()
    elif kind in ("p2c", "p2c_ewma"):
        inner = PowerOfTwoChoices(ewma=kind == "p2c_ewma")
    else:
        raise ValueError(f"unknown balancer {kind!r}")
    return inner if outlier is None else OutlierBalancer(inner, OutlierDetector(outlier))


def mesh_channel(
    name: str,
    discovery: Discovery,
    *,
    balancer: BalancerName | Balancer = "p2c",
    outlier: OutlierPolicy | None = ENVOY_OUTLIER,
    **kwargs: Any,
) -> MeshChannel:
    """A MeshChannel to ``name``: P2C least-outstanding with outlier ejection unless told otherwise."""
    chosen = make_balancer(balancer, outlier) if isinstance(balancer, str) else balancer
    return MeshChannel(name, discovery, balancer=chosen, **kwargs)
