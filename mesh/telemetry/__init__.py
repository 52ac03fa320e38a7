"""Telemetry: JSON logs with trace ids, OpenTelemetry tracing from OTEL_*, Prometheus metrics.

:func:`mesh.telemetry.setup.start_telemetry` builds all of it for one process; the
interceptors that feed it live in :mod:`mesh.interceptors`.
"""
