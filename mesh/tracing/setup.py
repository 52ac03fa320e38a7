"""OpenTelemetry tracing from the standard ``OTEL_*`` environment, or none at all.

The exporter is chosen as the OpenTelemetry specification says: ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` turn tracing off; ``console`` prints spans; ``otlp`` (the
default) exports over OTLP/gRPC, but only when an endpoint is configured
(``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``). With no exporter
:func:`tracer_provider` returns ``None`` and no tracing interceptor is installed, so tracing
off costs nothing per call. The provider is returned, never installed as OpenTelemetry's
global: the interceptors get their tracer passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

from mesh.config import env_str
from mesh.errors import ConfigError

EXPORTERS = ("none", "otlp", "console")
CLOSE_FLUSH_MILLIS = 1000
"""How long a closing process gives its last spans: the SDK's own shutdown waits up to 30 s,
and its export retries an unreachable collector until the exporter's 10 s timeout (a service
whose collector was down took 7.5 s to exit after SIGTERM, past its 5 s grace)."""


class BoundedBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor, whose shutdown gives the last export :data:`CLOSE_FLUSH_MILLIS`.

    After that the exporter is shut down, which ends a retry in progress, so a process whose
    collector is away stops on time and loses only the spans it could not send anyway. It
    reaches into ``_batch_processor``: the SDK is pinned to one version (pyproject.toml), and
    tests/integration/telemetry/test_tracing_shutdown.py times a real service's stop.
    """

    def shutdown(self) -> None:
        self._batch_processor.shutdown(timeout_millis=CLOSE_FLUSH_MILLIS)


@dataclass(frozen=True)
class TracingSettings:
    """Which exporter, where to, and the ``service.name`` (read once from the environment)."""

    exporter: str = "none"
    endpoint: str = ""
    insecure: bool = False
    service_name: str = ""

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise ConfigError(f"OTEL_TRACES_EXPORTER must be one of {EXPORTERS}, got {self.exporter!r}")
        if self.exporter == "otlp" and not self.endpoint:
            raise ConfigError("the otlp exporter needs OTEL_EXPORTER_OTLP_ENDPOINT")

    @property
    def enabled(self) -> bool:
        return self.exporter != "none"


def tracing_settings_from_env(environ: Mapping[str, str], service: str) -> TracingSettings:
    """The tracing settings ``OTEL_*`` describe; ``service`` unless OTEL_SERVICE_NAME says otherwise."""
    name = env_str(environ, "OTEL_SERVICE_NAME", service)
    if env_str(environ, "OTEL_SDK_DISABLED", "false").lower() == "true":
        return TracingSettings(service_name=name)
    exporter = env_str(environ, "OTEL_TRACES_EXPORTER", "otlp").lower()
    if "," in exporter:
        raise ConfigError(f"OTEL_TRACES_EXPORTER: one exporter only, got {exporter!r}")
    if exporter != "otlp":
        return TracingSettings(exporter=exporter, service_name=name)
    endpoint = env_str(
        environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", env_str(environ, "OTEL_EXPORTER_OTLP_ENDPOINT", "")
    )
    if not endpoint:
        return TracingSettings(service_name=name)
    insecure_default = "true" if urlsplit(endpoint).scheme == "http" else "false"
    insecure = env_str(
        environ,
        "OTEL_EXPORTER_OTLP_TRACES_INSECURE",
        env_str(environ, "OTEL_EXPORTER_OTLP_INSECURE", insecure_default),
    )
    return TracingSettings("otlp", endpoint, insecure.lower() == "true", name)


def _exporter(settings: TracingSettings) -> SpanExporter:
    if settings.exporter == "console":
        return ConsoleSpanExporter(service_name=settings.service_name)
    # Imported here: the OTLP exporter pulls in its own gRPC channel machinery.
    from mesh.tracing.otlp import BytesOtlpSpanExporter

    return BytesOtlpSpanExporter(endpoint=settings.endpoint, insecure=settings.insecure)


def tracer_provider(settings: TracingSettings) -> TracerProvider | None:
    """A provider exporting as configured (batched; console spans at once), or ``None``.

    The batch processor honours ``OTEL_BSP_*`` (schedule delay, queue size); call
    ``shutdown()`` on exit so the last spans are flushed (for at most :data:`CLOSE_FLUSH_MILLIS`).
    """
    if not settings.enabled:
        return None
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: settings.service_name}))
    exporter = _exporter(settings)
    if settings.exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BoundedBatchSpanProcessor(exporter))
    return provider
