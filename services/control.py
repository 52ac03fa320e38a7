"""The launcher's control endpoint: operators' changes (``mesh scale``, ``mesh restart``) over HTTP.

It listens on 127.0.0.1 only, on a free port, and wants ``Authorization: Bearer <secret>``:
the secret is drawn at start and written, with the URL, to the control file (0600; see
mesh/control.py for the protocol and the client). Each request runs on its own thread and
waits until the change is done, so ``mesh scale`` returns when the new instances serve;
what the fleet prints meanwhile is also returned to the caller as ``lines``.
"""

from __future__ import annotations

import hmac
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from mesh.control import ControlFile, write_control_file
from services.fleet import Busy, Fleet, FleetError

MAX_BODY_BYTES = 4096


class ControlServer:
    """Serves a :class:`Fleet` to operators until :meth:`close`."""

    def __init__(
        self, fleet: Fleet[Any], say: Callable[[str], None] = print, host: str = "127.0.0.1"
    ) -> None:
        self._fleet = fleet
        self._say = say
        self._secret = secrets.token_urlsafe(32)
        self._http = ThreadingHTTPServer((host, 0), _handler(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, name="control", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self, control_file: Path) -> None:
        self._thread.start()
        write_control_file(control_file, ControlFile(self.url, self._secret))

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def authorized(self, header: str) -> bool:
        scheme, _, secret = header.partition(" ")
        return scheme == "Bearer" and hmac.compare_digest(secret.encode(), self._secret.encode())

    def handle(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The status and JSON answer for one request (already authorized)."""
        lines: list[str] = []

        def say(line: str) -> None:
            lines.append(line.strip())

        try:
            if method == "GET" and path == "/v1/instances":
                return 200, {"ok": True, "data": [asdict(i) for i in self._fleet.instances()], "lines": []}
            if method == "POST" and path == "/v1/scale":
                service, count = body.get("service"), body.get("count")
                if not isinstance(service, str) or not isinstance(count, int) or isinstance(count, bool):
                    return 400, {"ok": False, "error": 'want {"service": "<name>", "count": <int>}'}
                self._say(f"mesh scale {service} {count}:")
                self._fleet.scale(service, count, say)
            elif method == "POST" and path == "/v1/restart":
                service = body.get("service")
                if not isinstance(service, str):
                    return 400, {"ok": False, "error": 'want {"service": "<name>"}'}
                self._say(f"mesh restart {service}:")
                self._fleet.restart(service, say)
            else:
                return 404, {"ok": False, "error": f"no such operation: {method} {path}"}
        except Busy as error:
            return 409, {"ok": False, "error": str(error), "lines": lines}
        except FleetError as error:
            return 400, {"ok": False, "error": str(error), "lines": lines}
        except Exception as error:  # a start that failed, a timeout: the operator must see it
            self._say(f"  failed: {error}")
            say(f"failed: {error}")
            return 500, {"ok": False, "error": str(error) or type(error).__name__, "lines": lines}
        return 200, {"ok": True, "lines": lines}


def _handler(server: ControlServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            if not server.authorized(self.headers.get("Authorization", "")):
                self._answer(
                    401, {"ok": False, "error": "missing or wrong bearer secret (see the control file)"}
                )
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._answer(413, {"ok": False, "error": f"body over {MAX_BODY_BYTES} bytes"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                self._answer(400, {"ok": False, "error": "the body is not JSON"})
                return
            if not isinstance(body, dict):
                self._answer(400, {"ok": False, "error": "the body must be a JSON object"})
                return
            self._answer(*server.handle(method, self.path, body))

        def _answer(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # the base class names it so
            """Quiet: the fleet prints what happened."""

    return Handler
