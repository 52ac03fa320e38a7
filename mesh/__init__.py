"""tsunagu: a proxyless gRPC service mesh for Python.

The library knows nothing about the shop: servers, discovery, balancing, resilience and
telemetry are generic, configured through the typed settings in :mod:`mesh.config`.
"""
