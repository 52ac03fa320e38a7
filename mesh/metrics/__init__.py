"""Prometheus metrics: the ``grpc_*`` families, who feeds them and the ``mesh_*`` collector.

``families`` registers go-grpc-prometheus's families in the process's own registry,
``server`` counts every handled call, ``client`` every attempt a mesh channel sends (an
observer, :mod:`mesh.observer`, so no task per call), ``resilience`` reads breakers, retries
and ejections off the channels at scrape time, and ``endpoint`` serves ``/metrics``. The
names and labels are a contract: docs/metrics.md.
"""
