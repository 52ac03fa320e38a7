"""Tracing: OpenTelemetry from the ``OTEL_*`` environment, server spans, mesh-channel client spans.

``setup`` reads the settings and builds the tracer provider (or none: tracing off costs
nothing per call), ``server`` gives each handled call a SERVER span continuing the caller's
W3C trace, ``client`` gives each mesh call a CLIENT span (one more per retried attempt)
through the channel's observer hooks (:mod:`mesh.observer`).
"""
