"""``mesh dashboard``: the mesh live in a browser.

One process serves a page (vanilla HTML, JS and CSS under ``static/``, no build step, nothing
from a CDN) that draws what :mod:`mesh.observe` samples from Consul and every instance's
``/metrics`` (topology, golden signals, breakers, ejections, retry budgets, sagas) and the
recent traces it receives itself over OTLP/gRPC, each openable as a waterfall. See
docs/dashboard.md.
"""
