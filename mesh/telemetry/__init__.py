"""Telemetry: structured logs now; tracing and metrics hang off the same package."""
