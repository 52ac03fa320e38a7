"""``/metrics`` over HTTP for one process's registry, served from a background thread.

The port is published in the registry meta as ``metrics_port`` (:mod:`mesh.telemetry`), so a
scraper finds every instance; docs/metrics.md describes what is served.
"""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


class MetricsEndpoint:
    """``/metrics`` (any path, in fact) over HTTP from a background thread.

    ``port`` 0 binds a free port; :attr:`port` is the one bound, which the service publishes
    in its registry meta as ``metrics_port`` so a scraper can find every instance.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port = int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
