"""Load through the REST gateway for fault tests: clients that count every answer.

:class:`Load` keeps idempotent reads going while a test breaks something, and records each
status, so "not one call failed" is checked from the clients' side. Bounded in count (per
client) and in time (the test stops it).
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter

CLIENTS_PER_ROUTE = 2
MAX_CALLS = 20_000  # per client: the load is bounded in count as well as in time


class Load:
    """Clients calling ``routes`` through the gateway until stopped; every status counted."""

    def __init__(self, port: int, routes: list[tuple[str, dict[str, str]]]) -> None:
        self.port = port
        self.routes = routes
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(path, headers), daemon=True)
            for path, headers in routes
            for _ in range(CLIENTS_PER_ROUTE)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def calls(self) -> int:
        with self._lock:
            return sum(self.statuses.values())

    def _client(self, path: str, headers: dict[str, str]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        for _ in range(MAX_CALLS):
            if self._stop.is_set():
                break
            try:
                connection.request("GET", path, headers=headers)
                reply = connection.getresponse()
                body = reply.read()
                status = reply.status
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                status, body = 0, str(error).encode()
            with self._lock:
                self.statuses[status] += 1
                if status != 200 and len(self.failures) < 20:
                    self.failures.append(f"GET {path}: {status} {body[:200]!r}")
        connection.close()


def gateway_call(
    port: int, method: str, path: str, body: dict[str, object] | None = None, token: str = ""
) -> dict[str, object]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    reply = connection.getresponse()
    payload = json.loads(reply.read() or b"{}")
    connection.close()
    assert reply.status == 200, (method, path, reply.status, payload)
    assert isinstance(payload, dict)
    return payload
