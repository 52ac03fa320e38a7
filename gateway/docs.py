"""The docs page: HTML, script and style shipped in gateway/static and served by the gateway.

Nothing is fetched from a CDN (nothing outside can be reached): the page renders
/openapi.json with a small script of its own and lets a reader try each operation.
"""

from __future__ import annotations

from importlib import resources

_ASSETS = {
    "/docs": ("docs.html", "text/html; charset=utf-8"),
    "/docs/": ("docs.html", "text/html; charset=utf-8"),
    "/docs/docs.js": ("docs.js", "text/javascript; charset=utf-8"),
    "/docs/docs.css": ("docs.css", "text/css; charset=utf-8"),
}


class DocsAssets:
    """The docs files, read once at start."""

    def __init__(self) -> None:
        folder = resources.files("gateway") / "static"
        self._files = {
            path: ((folder / name).read_bytes(), content_type)
            for path, (name, content_type) in _ASSETS.items()
        }

    def get(self, path: str) -> tuple[bytes, str] | None:
        return self._files.get(path)
