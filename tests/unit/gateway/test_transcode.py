"""proto3 JSON both ways, for every request and response type of the five services."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from gateway import jsonpb
from gateway.errors import GatewayError
from gateway.rules import Binding, bindings_of_files, load_files
from gateway.settings import DEFAULT_PROTO_MODULES
from gateway.transcode import RequestTranscoder, ResponseRenderer, load_json
from tests.unit.gateway.library import library_file

SHOP = list(bindings_of_files(load_files(DEFAULT_PROTO_MODULES)))
LIBRARY = {
    b.rpc.rsplit(".", 1)[1] + (f"_{b.index}" if b.index else ""): b
    for b in bindings_of_files([library_file()])
}


def fill(message: Message, depth: int = 0) -> Message:
    """Set every field to a non-default value (two elements for repeated ones)."""
    descriptor: Descriptor = message.DESCRIPTOR
    if descriptor.full_name == "google.protobuf.Timestamp":
        message.FromSeconds(1_700_000_000)  # type: ignore[attr-defined]
        message.nanos = 123_000_000  # type: ignore[attr-defined]
        return message
    if descriptor.full_name == "google.protobuf.FieldMask":
        message.paths.append("display_name")  # type: ignore[attr-defined]
        return message
    for field in descriptor.fields:
        if field.message_type is not None:
            if depth >= 3:
                continue
            if field.is_repeated:
                for _ in range(2):
                    fill(getattr(message, field.name).add(), depth + 1)
            else:
                fill(getattr(message, field.name), depth + 1)
            continue
        value = sample(field)
        if field.is_repeated:
            getattr(message, field.name).extend([value, value])
        else:
            setattr(message, field.name, value)
    return message


def sample(field: FieldDescriptor) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return f"v-{field.name}-é"
    if kind == FieldDescriptor.TYPE_BOOL:
        return True
    if kind == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values[-1].number  # type: ignore[union-attr]
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.5
    if kind == FieldDescriptor.TYPE_BYTES:
        return b"\x00\xffbytes"
    if kind in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64):
        return -(2**40)
    if kind in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return 2**63
    return 7


def message_types() -> dict[str, Descriptor]:
    found: dict[str, Descriptor] = {}
    for binding in SHOP:
        found[binding.method.input_type.full_name] = binding.method.input_type
        found[binding.method.output_type.full_name] = binding.method.output_type
    return found


TYPES = message_types()


def test_every_service_type_is_covered() -> None:
    packages = {name.split(".")[1] for name in TYPES}
    assert packages == {"user", "order", "payment", "inventory", "shipping"}
    assert len(TYPES) >= 50


@pytest.mark.parametrize("name", sorted(TYPES))
@pytest.mark.parametrize("original_names", [False, True])
def test_json_to_proto_round_trip(name: str, original_names: bool) -> None:
    """What a client writes in proto3 JSON (either naming style) is read back exactly."""
    cls = message_factory.GetMessageClass(TYPES[name])
    original = fill(cls())
    text = json_format.MessageToJson(original, preserving_proto_field_name=original_names)
    parsed = cls()
    jsonpb.merge(load_json(text.encode(), 32), parsed)
    assert parsed == original


@pytest.mark.parametrize("name", sorted(TYPES))
def test_proto_to_json_round_trip(name: str) -> None:
    """What the gateway writes is canonical proto3 JSON: it parses back to the same message."""
    binding = next(
        b for b in SHOP if b.method.output_type.full_name == name or b.method.input_type.full_name == name
    )
    cls = message_factory.GetMessageClass(TYPES[name])
    original = fill(cls())
    renderer = ResponseRenderer(_whole(binding))
    rendered = json.loads(renderer.render(original))
    assert json_format.ParseDict(rendered, cls()) == original
    for field in TYPES[name].fields:  # lowerCamel names, int64 as strings, enums by name
        assert field.json_name in rendered
        if field.type == FieldDescriptor.TYPE_INT64 and not field.is_repeated:
            assert isinstance(rendered[field.json_name], str)
        if field.type == FieldDescriptor.TYPE_ENUM and not field.is_repeated:
            assert rendered[field.json_name] == field.enum_type.values[-1].name  # type: ignore[union-attr]


def _whole(binding: Binding) -> Binding:
    return Binding(binding.method, binding.http_method, binding.template, binding.body, "", binding.index)


def test_response_body_renders_only_that_field() -> None:
    binding = next(b for b in SHOP if b.rpc.endswith("GetOrder"))
    response = fill(message_factory.GetMessageClass(binding.method.output_type)())
    rendered = json.loads(ResponseRenderer(binding).render(response))
    assert rendered["orderId"] == "v-order_id-é"
    assert "order" not in rendered


def test_unset_fields_are_present_with_defaults() -> None:
    binding = next(b for b in SHOP if b.rpc.endswith("GetProduct"))
    response = message_factory.GetMessageClass(binding.method.output_type)()
    response.product.sku = "X"
    assert json.loads(ResponseRenderer(binding).render(response)) == {"sku": "X", "name": "", "stock": "0"}


def transcoder(name: str, page: int = 100) -> RequestTranscoder:
    return RequestTranscoder(LIBRARY[name], max_json_depth=8, max_page_size=page)


def test_body_star_then_path_wins() -> None:
    request = transcoder("ArchiveBook").build(
        {"id": "from-path"}, "", b'{"id": "from-body", "reason": "old"}'
    )
    assert (request.id, request.reason) == ("from-path", "old")  # type: ignore[attr-defined]


def test_body_field_and_nested_path_field() -> None:
    request = transcoder("UpdateBook").build(
        {"book.id": "42"}, "comment=hi", b'{"title": "T", "pages": "12"}'
    )
    assert request.book.id == "42" and request.book.title == "T" and request.book.pages == 12  # type: ignore[attr-defined]
    assert request.comment == "hi"  # type: ignore[attr-defined]


def test_query_parameters_scalars_repeated_nested_enums() -> None:
    query = "page_size=5&kinds=KIND_NOVEL&kinds=2&author.name=Ada&author.born=2020-01-02T03:04:05Z&tags=a&tags=b&minRating=4.5&available=true"
    request: Any = transcoder("ListBooks").build({"shelf": "s1"}, query, b"")
    assert request.shelf == "s1" and request.page_size == 5
    assert list(request.kinds) == [1, 2]
    assert request.author.name == "Ada" and request.author.born.seconds == 1577934245
    assert list(request.tags) == ["a", "b"] and request.min_rating == 4.5 and request.available is True


def test_page_size_is_capped() -> None:
    request: Any = transcoder("ListBooks", page=100).build({"shelf": "s"}, "pageSize=5000", b"")
    assert request.page_size == 100


@pytest.mark.parametrize(
    ("name", "path", "query", "body", "field"),
    [
        ("ArchiveBook", {"id": "1"}, "", b'{"nope": 1}', "nope"),
        ("ArchiveBook", {"id": "1"}, "", b'{"reason": 5}', "reason"),
        ("ArchiveBook", {"id": "1"}, "", b"[1, 2]", "body"),
        ("ArchiveBook", {"id": "1"}, "", b"{not json", "body"),
        ("ArchiveBook", {"id": "1"}, "", b'{"reason": NaN}', "body"),
        ("ArchiveBook", {"id": "1"}, "", b'{"reason": "a", "reason": "b", "id": "x", "ID": 1}', "ID"),
        ("ArchiveBook", {"id": "1"}, "reason=x", b"{}", "query"),  # body "*": nothing from the query
        ("ArchiveBook", {"id": "1"}, "", b"\xff\xfe{}", "body"),
        ("UpdateBook", {"book.id": "1"}, "", b'{"pages": "+1"}', "book.pages"),
        ("UpdateBook", {"book.id": "1"}, "", b'{"pages": "1_000"}', "book.pages"),
        ("UpdateBook", {"book.id": "1"}, "", b'{"pages": "\\uff11"}', "book.pages"),
        ("UpdateBook", {"book.id": "1"}, "", b'{"pages": 1.5}', "book.pages"),
        ("UpdateBook", {"book.id": "1"}, "", b'{"pages": "99999999999999999999"}', "book.pages"),
        ("UpdateBook", {"book.id": "1"}, "", b'{"kind": "KIND_POEM"}', "book.kind"),
        ("UpdateBook", {"book.id": "1"}, "", b'{"tags": ["a", null]}', "book.tags[1]"),
        ("UpdateBook", {"book.id": "1"}, "", b'{"available": "true"}', "book.available"),
        ("UpdateBook", {"book.id": "1"}, "", b'{"cover": "not base64!"}', "book.cover"),
        ("UpdateBook", {"book.id": "1"}, "", b'{"author": {"born": "yesterday"}}', "book.author.born"),
        (
            "UpdateBook",
            {"book.id": "1"},
            "",
            b'{"title": "a", "title": "b", "author": {"name": "x"}, "id": 1}',
            "book.id",
        ),
        ("ListBooks", {"shelf": "s"}, "nope=1", b"", "nope"),
        ("ListBooks", {"shelf": "s"}, "shelf=t", b"", "shelf"),  # bound by the path
        ("ListBooks", {"shelf": "s"}, "page_size=abc", b"", "page_size"),
        ("ListBooks", {"shelf": "s"}, "page_size=1&page_size=2", b"", "page_size"),
        ("ListBooks", {"shelf": "s"}, "kinds=KIND_POEM", b"", "kinds"),
        ("ListBooks", {"shelf": "s"}, "available=yes", b"", "available"),
        ("ListBooks", {"shelf": "s"}, "author=x", b"", "author"),
        ("ListBooks", {"shelf": "s"}, "page_size=%ff", b"", "query"),
    ],
)
def test_bad_input_is_400_naming_the_field(
    name: str, path: dict[str, str], query: str, body: bytes, field: str
) -> None:
    with pytest.raises(GatewayError) as caught:
        transcoder(name).build(path, query, body)
    error = caught.value
    assert error.http_status == 400
    if field != "body" or error.details:
        violations = [v.field for d in error.details for v in getattr(d, "field_violations", [])]
        assert violations == [field], error.message


def test_json_nesting_limit() -> None:
    deep = b'{"author": ' * 3 + b"{}" + b"}" * 3
    with pytest.raises(GatewayError, match="nests deeper"):
        load_json(b"[" * 40 + b"]" * 40, 32)
    with pytest.raises(GatewayError, match="nests deeper"):
        load_json(b"[" * 100_000 + b"]" * 100_000, 32)
    assert load_json(deep, 32) is not None


def test_both_naming_styles_and_int64_numbers_are_accepted() -> None:
    camel: Any = transcoder("UpdateBook").build(
        {"book.id": "1"}, "", b'{"pages": 12, "author": {"name": "A"}}'
    )
    snake: Any = transcoder("ArchiveBook").build({"id": "1"}, "", b'{"reason": "r"}')
    assert camel.book.pages == 12 and camel.book.author.name == "A" and snake.reason == "r"


@pytest.mark.parametrize("name", sorted(TYPES))
@pytest.mark.parametrize("filled", [True, False])
def test_renderer_matches_json_format_exactly(name: str, filled: bool) -> None:
    """The gateway's own renderer writes what json_format writes, field for field."""
    cls = message_factory.GetMessageClass(TYPES[name])
    message = fill(cls()) if filled else cls()
    expected = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    assert jsonpb.to_json_value(message) == expected


def test_renderer_special_values() -> None:
    book = message_factory.GetMessageClass(LIBRARY["GetBook"].method.output_type)()
    for rating in (float("nan"), float("inf"), -float("inf"), 2.5):
        book.rating = rating
        book.cover = b"\xff\x00"
        book.kind = 99  # an unknown enum number stays a number
        expected = json_format.MessageToDict(book, always_print_fields_with_no_presence=True)
        assert jsonpb.to_json_value(book) == expected


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [
        (0, 0),
        (1_700_000_000, 5),
        (1_700_000_000, 120_000),
        (1_700_000_000, 123_000_000),
        (-1, 999_999_999),
        (253402300799, 0),
    ],
)
def test_timestamps_render_like_json_format(seconds: int, nanos: int) -> None:
    from google.protobuf import timestamp_pb2

    stamp = timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)
    assert jsonpb.to_json_value(stamp) == json_format.MessageToJson(stamp).strip('"')
