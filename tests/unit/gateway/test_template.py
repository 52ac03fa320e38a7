"""Path templates: parsing (table-driven), matching, and a property: never an exception."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.router import Entry, Router
from gateway.rules import bindings_of_files, load_files
from gateway.settings import DEFAULT_PROTO_MODULES
from gateway.template import PathTemplate, TemplateError, Variable, parse_template
from tests.unit.gateway.library import library_file

PARSED = [
    ("/v1/users", "/v1/users", [], ""),
    ("/v1/users/{user_id}", "/v1/users/*", ["user_id"], ""),
    ("/v1/users:login", "/v1/users:login", [], "login"),
    ("/v1/orders/{order_id}:cancel", "/v1/orders/*:cancel", ["order_id"], "cancel"),
    ("/v1/users/{user.user_id}", "/v1/users/*", ["user.user_id"], ""),
    ("/v1/{name=shelves/*/books/*}", "/v1/shelves/*/books/*", ["name"], ""),
    ("/v1/files/{path=**}", "/v1/files/**", ["path"], ""),
    ("/v1/*/items/**", "/v1/*/items/**", [], ""),
    ("/v1/{a}/{b.c}:do", "/v1/*/*:do", ["a", "b.c"], "do"),
]


@pytest.mark.parametrize(("source", "shape", "variables", "verb"), PARSED)
def test_parse(source: str, shape: str, variables: list[str], verb: str) -> None:
    template = parse_template(source)
    assert template.shape == shape
    assert [v.name for v in template.variables] == variables
    assert template.verb == verb


@pytest.mark.parametrize(
    "source",
    [
        "v1/users",  # no leading slash
        "/v1/{user_id",  # unclosed variable
        "/v1/{}",  # empty field path
        "/v1/{a={b}}",  # nested variable
        "/v1/**/tail",  # ** not last
        "/v1/users:",  # empty verb
        "/v1//users",  # empty segment
        "/v1/{a}/{a}",  # field bound twice
        "/v1/{1abc}",  # not an identifier
    ],
)
def test_parse_rejects(source: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(source)


def library_router() -> Router[str]:
    entries = [
        Entry(b.http_method, b.template, b.rpc, b.describe()) for b in bindings_of_files([library_file()])
    ]
    return Router(entries)


MATCHES = [
    ("GET", "/v1/shelves/s1/books/b2", "GetBook", {"name": "shelves/s1/books/b2"}),
    (
        "GET",
        "/v1/shelves/s%2F1/books/b",
        "GetBook",
        {"name": "shelves/s%2F1/books/b"},
    ),  # %2F kept in multi-segment
    ("GET", "/v1/shelves/fiction/books", "ListBooks", {"shelf": "fiction"}),
    ("GET", "/v1/books", "ListBooks", {}),  # additional binding
    ("POST", "/v1/shelves/a%20b/books", "CreateBook", {"shelf": "a b"}),  # single segment fully decoded
    ("PATCH", "/v1/books/42", "UpdateBook", {"book.id": "42"}),
    ("POST", "/v1/books/42:archive", "ArchiveBook", {"id": "42"}),
    ("GET", "/v1/files/a/b/c.txt", "GetFile", {"path": "a/b/c.txt"}),
    ("GET", "/v1/files", "GetFile", {"path": ""}),  # ** matches zero segments
    ("HEAD", "/v1/books/7", "HeadBook", {"id": "7"}),  # custom kind
]


@pytest.mark.parametrize(("method", "path", "rpc", "bindings"), MATCHES)
def test_match(method: str, path: str, rpc: str, bindings: dict[str, str]) -> None:
    found, values = library_router().match(method, path)
    assert found.endswith(f".{rpc}")
    assert values == bindings


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("GET", "/v1/shelves/s1/books/b2/extra", 404, None),
        ("GET", "/v1/nothing", 404, None),
        ("GET", "/v1/shelves//books", 404, None),
        ("DELETE", "/v1/books", 405, "GET"),
        ("GET", "/v1/books/42:archive", 405, "POST"),  # a declared verb is never read as an id
        ("PUT", "/v1/books/42", 405, "HEAD, PATCH"),
        ("GET", "/v1/shelves/%ff/books", 400, None),  # not UTF-8 once decoded
    ],
)
def test_no_match(method: str, path: str, status: int, allow: str | None) -> None:
    with pytest.raises(GatewayError) as caught:
        library_router().match(method, path)
    assert caught.value.http_status == status
    assert dict(caught.value.headers).get("allow") == allow


def test_verb_route_wins_over_variable_route() -> None:
    router = shop_router()
    assert router.match("GET", "/v1/orders/o1:watch")[0].endswith("WatchOrder")
    assert router.match("GET", "/v1/orders/o1")[0].endswith("GetOrder")
    assert router.match("GET", "/v1/orders/o1:other") == (
        "shop.order.v1.OrderService.GetOrder",
        {"order_id": "o1:other"},
    )


def shop_router() -> Router[str]:
    bindings = bindings_of_files(load_files(DEFAULT_PROTO_MODULES))
    return Router([Entry(b.http_method, b.template, b.rpc, b.describe()) for b in bindings])


ROUTES = [("shop", b.http_method, b.template) for b in bindings_of_files(load_files(DEFAULT_PROTO_MODULES))]
ROUTES += [("library", b.http_method, b.template) for b in bindings_of_files([library_file()])]
SEGMENT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=12)
VERBS = ("cancel", "watch", "login", "restock", "capture", "void", "refund", "release", "commit", "archive")


def draw_value(data: st.DataObject, template: PathTemplate, variable: Variable) -> str:
    """A value the variable's own segments accept: literals kept, ``*`` one segment, ``**`` any."""
    parts: list[str] = []
    for segment in template.segments[variable.start : variable.end]:
        if segment.kind == "literal":
            parts.append(segment.value)
        elif segment.kind == "wild":
            parts.append(data.draw(SEGMENT))
        else:
            parts += data.draw(st.lists(SEGMENT, max_size=3))
    return "/".join(parts)


@settings(max_examples=300, deadline=None)
@given(route=st.sampled_from(ROUTES), data=st.data())
def test_expanded_template_matches_with_its_bindings(
    route: tuple[str, str, PathTemplate], data: st.DataObject
) -> None:
    """A path built from a declared template matches that route, with exactly those values."""
    which, method, template = route
    values = {v.name: draw_value(data, template, v) for v in template.variables}
    path = template.expand(values)
    router = shop_router() if which == "shop" else library_router()
    try:
        _, bound = router.match(method, path)
    except GatewayError as error:
        # Only a value that itself ends in a declared ":verb" is taken by that verb's routes.
        assert error.http_status == 405, (path, error)
        assert path.endswith(tuple(f":{verb}" for verb in VERBS))
        return
    if path.endswith(tuple(f":{verb}" for verb in VERBS)) and not template.verb:
        return  # the verb route of the same method answered: also a declared route
    assert bound == values


@settings(max_examples=500, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"]),
    path=st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "v1",
                    "users",
                    "orders",
                    "products",
                    "shelves",
                    "books",
                    "x:login",
                    "o:watch",
                    "%2F",
                    "%ff",
                    "",
                ]
            ),
            st.text(max_size=8),
        ),
        max_size=6,
    ).map(lambda parts: "/" + "/".join(parts)),
)
def test_any_path_is_a_match_or_a_clean_error(method: str, path: str) -> None:
    """Whatever the path: a route with bindings that rebuild the path, or a 400/404/405."""
    for router in (shop_router(), library_router()):
        try:
            _, bound = router.match(method, path)
        except GatewayError as error:
            assert error.http_status in (400, 404, 405)
        else:
            assert all(isinstance(v, str) for v in bound.values())
