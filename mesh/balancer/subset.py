"""Subsets by tag: send a caller's traffic only to instances carrying the tags it asks for.

Filtering happens on the client, over the one shared watch per service name, so a process
can hold a channel to ``version=v2`` instances next to one to all instances without a second
Consul query.
"""

from __future__ import annotations

from mesh.registry.base import Endpoints


def subset(endpoints: Endpoints, tags: tuple[str, ...]) -> Endpoints:
    """The endpoints that carry every one of ``tags`` (all of them when ``tags`` is empty)."""
    if not tags:
        return endpoints
    wanted = set(tags)
    return tuple(endpoint for endpoint in endpoints if wanted.issubset(endpoint.tags))
