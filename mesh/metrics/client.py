"""``grpc_client_*`` metrics fed by the MeshChannel's call objects (no interceptor, no task).

Counts attempts, as go-grpc-prometheus counts calls on a plain channel: each attempt the
mesh puts on the wire (failover and retries included) is started, handled with its status
code, timed and held in flight. A call refused before sending (circuit open, no endpoint,
deadline already gone) sends nothing and so counts nothing here; the resilience collector
(:mod:`mesh.metrics.resilience`) counts those.
"""

from __future__ import annotations

from typing import Any

import grpc

from mesh.metrics.families import MethodMetrics, RpcFamilies
from mesh.observer import CallObservation, Metadata
from mesh.rpc import rpc_of


class _Observation:
    __slots__ = ("_began", "_metrics")

    def __init__(self, metrics: MethodMetrics) -> None:
        self._metrics = metrics
        self._began = 0.0  # 0: no attempt open

    def attempt_start(self, attempt: int, target: str, metadata: Metadata) -> Metadata:
        self._began = self._metrics.begin()
        return metadata

    def attempt_end(self, code: grpc.StatusCode) -> None:
        began = self._began
        if began:
            self._began = 0.0
            self._metrics.end(began, code)

    def call_end(self, code: grpc.StatusCode) -> None:
        self.attempt_end(code)  # a stream whose end arrives only with the call's


class _MethodMetrics:
    __slots__ = ("_metrics",)

    def __init__(self, metrics: MethodMetrics) -> None:
        self._metrics = metrics

    def call_start(self, metadata: Metadata) -> CallObservation:
        return _Observation(self._metrics)


class _ChannelMetrics:
    __slots__ = ("_families",)

    def __init__(self, families: RpcFamilies) -> None:
        self._families = families

    def for_method(self, path: str, call_type: str) -> _MethodMetrics:
        return _MethodMetrics(self._families.method(rpc_of(path, call_type)))


class ClientMetrics:
    """A :class:`~mesh.observer.CallObserver` recording ``grpc_client_*`` for every channel."""

    def __init__(self, families: RpcFamilies) -> None:
        self._channel = _ChannelMetrics(families)

    def for_channel(self, channel: Any) -> _ChannelMetrics:
        return self._channel
