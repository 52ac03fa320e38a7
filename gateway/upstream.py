"""The upstream seam: a service name -> something with grpc.aio.Channel's multicallables.

:class:`ChannelFactory` is all the gateway knows about reaching services. The static
factory here opens one plain ``grpc.aio`` channel per configured target
(``GATEWAY_UPSTREAM_<SERVICE>=host:port``); a MeshChannel (discovery, balancing,
resilience) fits the same protocol, since it duck-types ``grpc.aio.Channel``. Calls are
made generically from descriptors: the path ``/<service>/<method>`` and the message classes
from :func:`google.protobuf.message_factory.GetMessageClass` — nothing per RPC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import grpc
import grpc.aio
from google.protobuf import message_factory
from google.protobuf.message import Message

from gateway.rules import Binding
from mesh.channel import MeshChannel, mesh_channel
from mesh.connect.workload import WorkloadIdentity
from mesh.observer import CallObserver
from mesh.registry import Discovery
from mesh.resilience import PolicySettings

_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
)


class Channel(Protocol):
    """The part of ``grpc.aio.Channel`` the gateway uses."""

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> Any: ...

    def unary_stream(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        _registered_method: bool | None = False,
    ) -> Any: ...


class ChannelFactory(Protocol):
    def channel(self, service: str) -> Channel:
        """The channel to ``service`` (opened on first use, then reused)."""
        ...

    def endpoint_count(self, service: str) -> int:
        """How many endpoints of ``service`` are known right now (readiness)."""
        ...

    async def close(self) -> None: ...


class StaticChannelFactory:
    """One plain grpc.aio channel per configured ``host:port`` target.

    Channels are opened lazily, inside the running event loop (grpc.aio binds to it).
    """

    def __init__(
        self, targets: Mapping[str, str], options: tuple[tuple[str, Any], ...] = _CHANNEL_OPTIONS
    ) -> None:
        self._targets = dict(targets)
        self._options = options
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, service: str) -> Channel:
        channel = self._channels.get(service)
        if channel is None:
            target = self._targets.get(service)
            if target is None:
                raise KeyError(f"no upstream configured for {service!r}")
            channel = self._channels[service] = grpc.aio.insecure_channel(target, options=self._options)
        result: Channel = channel
        return result

    def endpoint_count(self, service: str) -> int:
        return 1 if service in self._targets else 0

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


class MeshChannelFactory:
    """One MeshChannel per upstream service over a shared discovery (Consul or static).

    This is what the gateway runs with: endpoints come from the registry, each call picks one
    (P2C with outlier ejection) and a call refused before reaching a server fails over.
    ``observers`` (:func:`mesh.telemetry.client_observers`) give the upstream calls
    ``grpc_client_*`` and ``mesh_*`` metrics and, with tracing on, client spans. With
    ``identity`` (the gateway's own, :mod:`mesh.connect`) every upstream call is mTLS: the
    gateway is a mesh identity like any service, and intentions decide what it may call.
    """

    def __init__(
        self,
        discovery: Discovery,
        policy: PolicySettings | None = None,
        observers: Sequence[CallObserver] = (),
        identity: WorkloadIdentity | None = None,
    ) -> None:
        self._discovery = discovery
        self._policy = policy
        self._observers = tuple(observers)
        self._identity = identity
        self._channels: dict[str, MeshChannel] = {}

    def channel(self, service: str) -> Channel:
        return self._mesh_channel(service)

    def endpoint_count(self, service: str) -> int:
        return len(self._mesh_channel(service).endpoints)

    def _mesh_channel(self, service: str) -> MeshChannel:
        channel = self._channels.get(service)
        if channel is None:
            channel = self._channels[service] = mesh_channel(
                service,
                self._discovery,
                policy=self._policy,
                observers=self._observers,
                identity=self._identity,
            )
            channel.start()
        return channel

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()
        await self._discovery.close()


class Invoker:
    """The multicallable of one RPC, created on first use from its descriptor."""

    def __init__(self, binding: Binding, upstream: str, factory: ChannelFactory) -> None:
        self.upstream = upstream
        self.path = binding.grpc_path
        self.streaming = binding.server_streaming
        request_class: type[Message] = message_factory.GetMessageClass(binding.method.input_type)
        response_class: type[Message] = message_factory.GetMessageClass(binding.method.output_type)
        self._serialize = request_class.SerializeToString
        self._deserialize = response_class.FromString
        self._factory = factory
        self._callable: Any = None

    @property
    def callable(self) -> Any:
        if self._callable is None:
            channel = self._factory.channel(self.upstream)
            make = channel.unary_stream if self.streaming else channel.unary_unary
            self._callable = make(
                self.path,
                request_serializer=self._serialize,
                response_deserializer=self._deserialize,
                _registered_method=True,
            )
        return self._callable
