"""Telemetry: JSON logs with trace ids, OpenTelemetry tracing from OTEL_*, Prometheus metrics.

:func:`mesh.telemetry.setup.start_telemetry` builds all of it for one process. The server
side is fed by the interceptors in :mod:`mesh.interceptors`; mesh channels by the observers
here (``client_metrics``, ``client_tracing``, ``resilience_metrics``).
"""
