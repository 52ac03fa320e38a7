"""The docs page's assets: shipped in the package, served under /docs with their content types."""

from __future__ import annotations

from gateway.docs import DocsAssets


def test_the_page_and_its_assets_are_served_from_the_package() -> None:
    docs = DocsAssets()
    page = docs.get("/docs")
    assert page is not None and page[1] == "text/html; charset=utf-8"
    assert docs.get("/docs/") == page
    assert b"/docs/docs.js" in page[0] and b"/docs/docs.css" in page[0]  # the page loads its own files
    script, style = docs.get("/docs/docs.js"), docs.get("/docs/docs.css")
    assert script is not None and script[1] == "text/javascript; charset=utf-8" and script[0]
    assert style is not None and style[1] == "text/css; charset=utf-8" and style[0]
    assert b"/openapi.json" in script[0]


def test_nothing_else_is_served() -> None:
    docs = DocsAssets()
    for path in ("/docs/docs.html", "/docs/../app.py", "/docs/x", "/doc", "/static/docs.js"):
        assert docs.get(path) is None
