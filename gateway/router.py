"""The router: (HTTP method, raw path) -> route and decoded bindings, or a 404/405.

All templates of one HTTP method are compiled into ONE alternation regex, ordered most
specific first (a ``:verb`` before none, literals before wildcards), so matching is a single
C-level ``re.match`` whatever the number of routes. A path that names a custom verb some rule
declares (``/v1/orders/42:cancel``) belongs to the verb routes only: it is never read as an
id ending in ``:cancel`` by a verb-less rule of another method, so the 405 for it lists only
the methods the documented verb path supports. Two rules of the same method whose
templates have the same shape can never both be reached: that is a :class:`RouteConflict`,
reported when the router is built (the gateway refuses to start).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import grpc

from gateway.errors import GatewayError
from gateway.template import PathTemplate

R = TypeVar("R")


class RouteConflict(ValueError):
    """Rules that shadow each other; ``conflicts`` lists each pair's descriptions."""

    def __init__(self, conflicts: list[tuple[str, str]]) -> None:
        self.conflicts = conflicts
        lines = "; ".join(f"{a} <-> {b}" for a, b in conflicts)
        super().__init__(f"conflicting http rules: {lines}")


@dataclass(frozen=True)
class Entry(Generic[R]):
    http_method: str
    template: PathTemplate
    payload: R
    description: str


class _MethodTable(Generic[R]):
    def __init__(self, entries: list[Entry[R]]) -> None:
        self.entries = sorted(entries, key=lambda e: e.template.specificity)
        alternatives = [f"(?P<r{i}>{e.template.regex(f'r{i}_')})" for i, e in enumerate(self.entries)]
        self.regex = re.compile("(?:" + "|".join(alternatives) + ")") if alternatives else None

    def match(self, path: str) -> tuple[Entry[R], dict[str, str]] | None:
        if self.regex is None:
            return None
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        name = found.lastgroup
        assert name is not None
        index = int(name[1:])
        entry = self.entries[index]
        if not entry.template.variables:
            return entry, {}
        return entry, entry.template.bindings(found.groupdict(), f"r{index}_")


class Router(Generic[R]):
    """Matches requests against the routes given at construction (immutable afterwards)."""

    def __init__(self, entries: Sequence[Entry[R]]) -> None:
        conflicts: list[tuple[str, str]] = []
        seen: dict[tuple[str, str], Entry[R]] = {}
        by_method: dict[str, list[Entry[R]]] = {}
        for entry in entries:
            key = (entry.http_method, entry.template.shape)
            if key in seen:
                conflicts.append((seen[key].description, entry.description))
                continue
            seen[key] = entry
            by_method.setdefault(entry.http_method, []).append(entry)
        if conflicts:
            raise RouteConflict(conflicts)
        self.entries = tuple(entries)
        self._tables = {method: _MethodTable(items) for method, items in by_method.items()}
        verb_only = {method: [e for e in items if e.template.verb] for method, items in by_method.items()}
        self._verb_tables = {method: _MethodTable(items) for method, items in verb_only.items() if items}
        verb_regexes = [
            e.template.regex(f"v{i}_") for i, e in enumerate(x for v in verb_only.values() for x in v)
        ]
        self._any_verb = re.compile("(?:" + "|".join(verb_regexes) + ")") if verb_regexes else None

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(sorted(self._tables))

    def match(self, http_method: str, path: str) -> tuple[R, dict[str, str]]:
        """The route and its bindings; GatewayError 404 (no route), 405 (other methods), 400."""
        try:
            tables = self._tables
            if ":" in path and self._any_verb is not None and self._any_verb.fullmatch(path):
                tables = self._verb_tables
            table = tables.get(http_method)
            found = table.match(path) if table is not None else None
            if found is not None:
                return found[0].payload, found[1]
            allowed = [m for m, t in tables.items() if m != http_method and t.match(path) is not None]
        except UnicodeDecodeError:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the path is not valid percent-encoded UTF-8",
                reason="BAD_PATH",
            ) from None
        if allowed:
            allow = ", ".join(sorted(allowed))
            raise GatewayError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"method {http_method} is not allowed on {path[:200]}",
                reason="METHOD_NOT_ALLOWED",
                http_status=405,
                headers=[("allow", allow)],
            )
        raise GatewayError(grpc.StatusCode.NOT_FOUND, f"no route for {path[:200]}", reason="ROUTE_NOT_FOUND")
