"""The gateway in Consul, as every service is: service ``gateway``, meta ``metrics_port``.

Registration reuses the mesh's :class:`~mesh.registry.ConsulRegistrar` (background retries,
re-registration when the agent forgot, deregistration first on stop); only the check differs.
The gateway speaks HTTP, not grpc.health.v1, so Consul checks it with an HTTP GET of
``/readyz``: 200 (routes built, an endpoint known for every upstream) is passing, anything
else critical, so a gateway that cannot route, or is stopping, drops out of the healthy set
that load balancers and scrapers read. A gateway serving HTTPS is checked over HTTPS, without
verifying its certificate (Consul dials an address, which the certificate need not name).
"""

from __future__ import annotations

from typing import Any

from mesh.registry import ConsulRegistrar, ServiceInstance
from mesh.telemetry import METRICS_PORT_META

SERVICE_NAME = "gateway"
READY_PATH = "/readyz"


class GatewayRegistrar(ConsulRegistrar):
    """A :class:`ConsulRegistrar` whose check is an HTTP(S) GET of the gateway's ``/readyz``."""

    def __init__(self, *args: Any, https: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.https = https

    def check_for(self, instance: ServiceInstance) -> dict[str, Any]:
        check: dict[str, Any] = {
            "Name": f"HTTP readiness of {instance.id}",
            "HTTP": f"{'https' if self.https else 'http'}://{instance.target}{READY_PATH}",
            "Method": "GET",
            "Interval": f"{self.check_interval:g}s",
            "Timeout": f"{self.check_timeout:g}s",
            "DeregisterCriticalServiceAfter": f"{self.deregister_after:g}s",
        }
        if self.https:
            check["TLSSkipVerify"] = True
        return check


def gateway_instance(address: str, port: int, metrics_port: int, *, mtls: bool = True) -> ServiceInstance:
    """The instance one gateway publishes; the id is stable across restarts on the same port.

    Meta ``mtls`` is ``on``, or ``off`` when the gateway runs with ``MESH_INSECURE=1``, as
    every service says it.
    """
    return ServiceInstance(
        id=f"{SERVICE_NAME}-{address}-{port}",
        name=SERVICE_NAME,
        address=address,
        port=port,
        meta={METRICS_PORT_META: str(metrics_port), "mtls": "on" if mtls else "off"},
    )
