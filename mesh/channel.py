"""MeshChannel: what generated stubs accept, spreading calls over a service's endpoints.

``InventoryServiceStub(channel)`` calls ``channel.unary_unary(path, request_serializer=…,
response_deserializer=…, _registered_method=True)`` once per method at construction, so the
channel hands out multicallables that choose an endpoint on every invocation. grpc.aio has
no ``intercept_channel``: interceptors are given to the real per-endpoint channels, one class
per call type (grpc/grpc#31442).

    discovery = ConsulDiscovery(consul_address)
    channel = mesh_channel("inventory", discovery)
    stub = InventoryServiceStub(channel)
    await stub.Reserve(request, timeout=2.0)
    await channel.close()
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Literal

import grpc
import grpc.aio

from mesh.balancer.base import Balancer
from mesh.balancer.outlier import OutlierBalancer, OutlierDetector, OutlierPolicy
from mesh.balancer.p2c import PowerOfTwoChoices
from mesh.balancer.round_robin import RoundRobin
from mesh.channel_calls import MeshUnaryUnaryCall
from mesh.channel_pool import EndpointPool
from mesh.channel_resilience import Resilience
from mesh.channel_spec import CallSpec
from mesh.channel_stream_request import MeshStreamRequestCall
from mesh.channel_unary_stream import MeshUnaryStreamCall
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


class _MultiCallable:
    __slots__ = ("_spec",)

    def __init__(self, spec: CallSpec) -> None:
        self._spec = spec


class _UnaryUnary(_MultiCallable):
    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> MeshUnaryUnaryCall:
        self._spec.pool.ensure_started()
        return MeshUnaryUnaryCall(
            self._spec, request, timeout, metadata, credentials, wait_for_ready, compression
        )


class _UnaryStream(_MultiCallable):
    def __call__(
        self,
        request: Any,
        *,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> MeshUnaryStreamCall:
        self._spec.pool.ensure_started()
        return MeshUnaryStreamCall(
            self._spec, request, timeout, metadata, credentials, wait_for_ready, compression
        )


class _StreamRequest(_MultiCallable):
    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: Any = None,
        wait_for_ready: bool | None = None,
        compression: Any = None,
    ) -> MeshStreamRequestCall:
        self._spec.pool.ensure_started()
        return MeshStreamRequestCall(
            self._spec, request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )


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

    def _open_channel(self, instance: ServiceInstance) -> Any:
        interceptors = self._interceptors or None
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

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
        **_: Any,
    ) -> _UnaryUnary:
        """A multicallable choosing an endpoint per call, with failover."""
        return _UnaryUnary(
            self._spec("unary_unary", method, request_serializer, response_deserializer, _registered_method)
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
        **_: Any,
    ) -> _UnaryStream:
        """A multicallable choosing an endpoint per call, failing over before the first message."""
        return _UnaryStream(
            self._spec("unary_stream", method, request_serializer, response_deserializer, _registered_method)
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
        **_: Any,
    ) -> _StreamRequest:
        """A multicallable choosing an endpoint per call (no failover: requests are not replayable)."""
        return _StreamRequest(
            self._spec("stream_unary", method, request_serializer, response_deserializer, _registered_method)
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: Any = False,
        **_: Any,
    ) -> _StreamRequest:
        """A multicallable choosing an endpoint per call (no failover: requests are not replayable)."""
        return _StreamRequest(
            self._spec("stream_stream", method, request_serializer, response_deserializer, _registered_method)
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
