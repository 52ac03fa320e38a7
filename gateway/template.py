"""Path templates of ``google.api.http`` rules: parsed once, matched by one compiled regex.

The grammar (google/api/http.proto)::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

``{field}`` is ``{field=*}``: one segment, percent-decoded in full. A variable spanning
several segments (``{name=shelves/*/books/*}`` or ``**``) keeps ``%2F`` encoded, as the
spec asks, so the bound value can be split again. ``**`` matches zero or more segments and
may only be the last segment. Matching is done on the raw (still encoded) path, so an
encoded slash never splits a segment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERAL = re.compile(r"[A-Za-z0-9\-._~%!$&'()+,;=@]+")
SEGMENT_RE = r"[^/]+"

SegmentKind = Literal["literal", "wild", "deep"]


class TemplateError(ValueError):
    """The template does not follow the http.proto grammar; the message says where."""


@dataclass(frozen=True)
class Segment:
    kind: SegmentKind
    value: str = ""

    def regex(self) -> str:
        if self.kind == "literal":
            return re.escape(self.value)
        return SEGMENT_RE


@dataclass(frozen=True)
class Variable:
    """A field bound by the path: segments ``start``..``end`` (exclusive) of the template."""

    field_path: tuple[str, ...]
    start: int
    end: int

    @property
    def name(self) -> str:
        return ".".join(self.field_path)


@dataclass(frozen=True)
class PathTemplate:
    source: str
    segments: tuple[Segment, ...]
    variables: tuple[Variable, ...]
    verb: str = ""

    @property
    def shape(self) -> str:
        """The template with variables erased: two templates of one shape match the same paths."""
        parts = [{"literal": s.value, "wild": "*", "deep": "**"}[s.kind] for s in self.segments]
        return "/" + "/".join(parts) + (f":{self.verb}" if self.verb else "")

    @property
    def specificity(self) -> tuple[int, tuple[int, ...]]:
        """Sort key, most specific first: a verb, then literals before wildcards, left to right."""
        ranks = tuple({"literal": 0, "wild": 1, "deep": 2}[s.kind] for s in self.segments)
        return (0 if self.verb else 1, (*ranks, 3))

    def variable_for(self, index: int) -> Variable | None:
        for variable in self.variables:
            if variable.start <= index < variable.end:
                return variable
        return None

    def regex(self, group_prefix: str) -> str:
        """A regex over the raw path; variable ``i`` is captured as ``{group_prefix}{i}``."""
        out: list[str] = []
        index = 0
        while index < len(self.segments):
            variable = self.variable_for(index)
            if variable is None:
                out.append(_piece(self.segments[index]))
                index += 1
                continue
            number = self.variables.index(variable)
            inner = "".join(_piece(s) for s in self.segments[variable.start : variable.end])
            out.append(f"(?P<{group_prefix}{number}>{inner})")
            index = variable.end
        verb = ":" + re.escape(self.verb) if self.verb else ""
        return "".join(out) + verb

    def bindings(self, captured: dict[str, str | None], group_prefix: str) -> dict[str, str]:
        """Decoded field values from a regex match made with :meth:`regex`."""
        values: dict[str, str] = {}
        for number, variable in enumerate(self.variables):
            raw = (captured.get(f"{group_prefix}{number}") or "").removeprefix("/")
            if variable.end - variable.start == 1 and self.segments[variable.start].kind == "wild":
                values[variable.name] = unquote(raw, errors="strict")
            else:
                values[variable.name] = unquote_keep_slash(raw)
        return values

    def expand(self, values: dict[str, str]) -> str:
        """The path this template matches with ``values`` bound (used by tests and docs)."""
        from urllib.parse import quote

        parts: list[str] = []
        index = 0
        while index < len(self.segments):
            variable = self.variable_for(index)
            if variable is None:
                parts.append(self.segments[index].value)
                index += 1
                continue
            value = values[variable.name]
            single = variable.end - variable.start == 1 and self.segments[variable.start].kind == "wild"
            encoded = quote(value, safe="") if single else quote(value, safe="/")
            if encoded:
                parts.append(encoded)
            index = variable.end
        return "/" + "/".join(parts) + (f":{self.verb}" if self.verb else "")


def _piece(segment: Segment) -> str:
    if segment.kind == "deep":
        return r"(?:/[^/]+)*"
    return "/" + segment.regex()


def unquote_keep_slash(raw: str) -> str:
    """Percent-decode a multi-segment value except ``%2F`` (reserved expansion)."""
    return "%2F".join(unquote(part, errors="strict") for part in re.split("%2[Ff]", raw))


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.pos = 0
        self.segments: list[Segment] = []
        self.variables: list[Variable] = []

    def fail(self, why: str) -> TemplateError:
        return TemplateError(f"template {self.source!r} at {self.pos}: {why}")

    def peek(self) -> str:
        return self.source[self.pos] if self.pos < len(self.source) else ""

    def parse(self) -> PathTemplate:
        if self.peek() != "/":
            raise self.fail("must start with '/'")
        self.pos += 1
        self.parse_segments(in_variable=False)
        verb = ""
        if self.peek() == ":":
            self.pos += 1
            match = _LITERAL.match(self.source, self.pos)
            if match is None:
                raise self.fail("empty verb")
            verb = match.group()
            self.pos = match.end()
        if self.pos != len(self.source):
            raise self.fail(f"unexpected {self.peek()!r}")
        for index, segment in enumerate(self.segments):
            if segment.kind == "deep" and index != len(self.segments) - 1:
                raise TemplateError(f"template {self.source!r}: '**' must be the last segment")
        names = [v.name for v in self.variables]
        if len(set(names)) != len(names):
            raise TemplateError(f"template {self.source!r}: a field is bound twice")
        return PathTemplate(self.source, tuple(self.segments), tuple(self.variables), verb)

    def parse_segments(self, in_variable: bool) -> None:
        while True:
            self.parse_segment(in_variable)
            if self.peek() != "/":
                return
            self.pos += 1

    def parse_segment(self, in_variable: bool) -> None:
        if self.source.startswith("**", self.pos):
            self.pos += 2
            self.segments.append(Segment("deep"))
        elif self.peek() == "*":
            self.pos += 1
            self.segments.append(Segment("wild"))
        elif self.peek() == "{":
            if in_variable:
                raise self.fail("variables cannot nest")
            self.parse_variable()
        else:
            match = _LITERAL.match(self.source, self.pos)
            if match is None:
                raise self.fail("expected a segment")
            self.pos = match.end()
            self.segments.append(Segment("literal", match.group()))

    def parse_variable(self) -> None:
        self.pos += 1
        path: list[str] = []
        while True:
            match = _IDENT.match(self.source, self.pos)
            if match is None:
                raise self.fail("expected a field name")
            path.append(match.group())
            self.pos = match.end()
            if self.peek() != ".":
                break
            self.pos += 1
        start = len(self.segments)
        if self.peek() == "=":
            self.pos += 1
            self.parse_segments(in_variable=True)
        else:
            self.segments.append(Segment("wild"))
        if self.peek() != "}":
            raise self.fail("expected '}'")
        self.pos += 1
        self.variables.append(Variable(tuple(path), start, len(self.segments)))


def parse_template(source: str) -> PathTemplate:
    """Parse an http rule path; TemplateError when it breaks the grammar."""
    return _Parser(source).parse()
