"""MeshChannel: what generated stubs accept, spreading calls over a service's endpoints.

``InventoryServiceStub(channel)`` calls ``channel.unary_unary(path, request_serializer=…,
response_deserializer=…, _registered_method=True)`` once per method at construction, so the
channel hands out multicallables that choose an endpoint on every invocation. grpc.aio has
no ``intercept_channel``: interceptors are given to the real per-endpoint channels.

    discovery = ConsulDiscovery(consul_address)
    channel = mesh_channel("inventory", discovery)
    stub = InventoryServiceStub(channel)
    await stub.Reserve(request, timeout=2.0)
    await channel.close()

The parts, as kratos splits them (registry -> selector -> balancer, one place that reports):

    surface.py         the grpc.aio.Channel surface and its multicallables
    pool.py            one grpc.aio channel per endpoint, kept in step with discovery
    spec.py            what a stub method shares: policy, observer, per-endpoint callables
    selector.py        the pick for one attempt: the balancer behind filters; waiting for endpoints
    attempts.py        THE attempt engine: send / fail over / retry / stop, each outcome reported once
    resilience.py      breakers, retry budget and counters of the target service; method policy
    errors.py          the statuses the channel raises itself
    call.py            the call surface shared by unary-request calls
    unary.py, unary_stream.py, stream_request.py    thin adapters, one per call type
"""

from mesh.channel.surface import ENVOY_OUTLIER, BalancerName, MeshChannel, make_balancer, mesh_channel

__all__ = ["ENVOY_OUTLIER", "BalancerName", "MeshChannel", "make_balancer", "mesh_channel"]
