"""Thin grpc.aio adapters, one module per concern and ONE CLASS PER CALL TYPE on the client.

grpc.aio registers a client interceptor class that implements several call types for
unary-unary only (grpc/grpc#31442), so every client concern ships four classes and a helper
that returns all four. Server interceptors wrap the method handler once per call type.

The client interceptors here are for plain ``grpc.aio`` channels (opt-in, for callers that do
not use a MeshChannel). Mesh channels get their client telemetry from observers
(:mod:`mesh.observer`, :mod:`mesh.telemetry.client_metrics`,
:mod:`mesh.telemetry.client_tracing`), which cost no task per call.
"""
