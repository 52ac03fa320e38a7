"""The dashboard in Consul (opt-in, ``--register``): service ``dashboard``, checked over HTTP.

Why: operators find the page where they find everything else (``mesh status``, the Consul UI),
and its OTLP port is in the meta (``otlp_port``) for whoever wires exporters. Why opt-in: the
dashboard shows what is in Consul, and a dashboard entry has no ``/metrics`` to scrape; a
local run does not need it. Registration reuses :class:`~mesh.registry.ConsulRegistrar`
(background retries, re-registration when the agent forgot, withdrawn first on stop); only
the check differs: an HTTP GET of ``/healthz``.
"""

from __future__ import annotations

from typing import Any

from mesh.registry import ConsulRegistrar, ServiceInstance

SERVICE_NAME = "dashboard"
HEALTH_PATH = "/healthz"


class DashboardRegistrar(ConsulRegistrar):
    """A :class:`ConsulRegistrar` whose check is an HTTP GET of the dashboard's ``/healthz``."""

    def check_for(self, instance: ServiceInstance) -> dict[str, Any]:
        return {
            "Name": f"HTTP health of {instance.id}",
            "HTTP": f"http://{instance.target}{HEALTH_PATH}",
            "Method": "GET",
            "Interval": f"{self.check_interval:g}s",
            "Timeout": f"{self.check_timeout:g}s",
            "DeregisterCriticalServiceAfter": f"{self.deregister_after:g}s",
        }


def dashboard_instance(address: str, port: int, otlp_port: int) -> ServiceInstance:
    """The instance one dashboard publishes; the id is stable across restarts on the same port."""
    return ServiceInstance(
        id=f"{SERVICE_NAME}-{address}-{port}",
        name=SERVICE_NAME,
        address=address,
        port=port,
        meta={"otlp_port": str(otlp_port)},
    )
