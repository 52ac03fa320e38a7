"""A synthetic service built in memory, with every http-rule form the shop's protos lack.

``{name=shelves/*/books/*}``, ``**``, additional_bindings, a custom method kind, nested path
fields, ``body: "field"``, ``response_body`` and repeated/enum/nested query fields: the
router, transcoder and OpenAPI generator are exercised on all of them without touching
protos/.
"""

from __future__ import annotations

from functools import cache

from google.api import annotations_pb2  # type: ignore[import-untyped]
from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2
from google.protobuf.descriptor import FileDescriptor

F = descriptor_pb2.FieldDescriptorProto
PACKAGE = "test.library.v1"


def _field(
    message: descriptor_pb2.DescriptorProto, name: str, number: int, kind: int, **extra: object
) -> None:
    field = message.field.add(name=name, number=number, type=kind, label=F.LABEL_OPTIONAL)
    for key, value in extra.items():
        setattr(field, key, value)


def _message(file: descriptor_pb2.FileDescriptorProto, name: str) -> descriptor_pb2.DescriptorProto:
    return file.message_type.add(name=name)


@cache
def library_file() -> FileDescriptor:
    timestamp_pb2.Timestamp()  # make sure timestamp.proto is in the default pool
    file = descriptor_pb2.FileDescriptorProto(
        name="test/library/v1/library.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=["google/api/annotations.proto", "google/protobuf/timestamp.proto"],
    )
    kind = file.enum_type.add(name="Kind")
    for number, name in enumerate(("KIND_UNSPECIFIED", "KIND_NOVEL", "KIND_ESSAY")):
        kind.value.add(name=name, number=number)
    author = _message(file, "Author")
    _field(author, "name", 1, F.TYPE_STRING)
    _field(author, "born", 2, F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp")
    book = _message(file, "Book")
    _field(book, "id", 1, F.TYPE_STRING)
    _field(book, "title", 2, F.TYPE_STRING)
    _field(book, "pages", 3, F.TYPE_INT64)
    _field(book, "tags", 4, F.TYPE_STRING, label=F.LABEL_REPEATED)
    _field(book, "kind", 5, F.TYPE_ENUM, type_name=f".{PACKAGE}.Kind")
    _field(book, "author", 6, F.TYPE_MESSAGE, type_name=f".{PACKAGE}.Author")
    _field(book, "rating", 7, F.TYPE_DOUBLE)
    _field(book, "available", 8, F.TYPE_BOOL)
    _field(book, "cover", 9, F.TYPE_BYTES)
    get = _message(file, "GetBookRequest")
    _field(get, "name", 1, F.TYPE_STRING)
    listing = _message(file, "ListBooksRequest")
    _field(listing, "shelf", 1, F.TYPE_STRING)
    _field(listing, "page_size", 2, F.TYPE_INT32)
    _field(listing, "kinds", 3, F.TYPE_ENUM, type_name=f".{PACKAGE}.Kind", label=F.LABEL_REPEATED)
    _field(listing, "author", 4, F.TYPE_MESSAGE, type_name=f".{PACKAGE}.Author")
    _field(listing, "tags", 5, F.TYPE_STRING, label=F.LABEL_REPEATED)
    _field(listing, "min_rating", 6, F.TYPE_DOUBLE)
    _field(listing, "available", 7, F.TYPE_BOOL)
    books = _message(file, "ListBooksResponse")
    _field(books, "books", 1, F.TYPE_MESSAGE, type_name=f".{PACKAGE}.Book", label=F.LABEL_REPEATED)
    _field(books, "next_page_token", 2, F.TYPE_STRING)
    create = _message(file, "CreateBookRequest")
    _field(create, "shelf", 1, F.TYPE_STRING)
    _field(create, "book", 2, F.TYPE_MESSAGE, type_name=f".{PACKAGE}.Book")
    _field(create, "request_id", 3, F.TYPE_STRING)
    update = _message(file, "UpdateBookRequest")
    _field(update, "book", 1, F.TYPE_MESSAGE, type_name=f".{PACKAGE}.Book")
    _field(update, "comment", 2, F.TYPE_STRING)
    archive = _message(file, "ArchiveBookRequest")
    _field(archive, "id", 1, F.TYPE_STRING)
    _field(archive, "reason", 2, F.TYPE_STRING)
    reply = _message(file, "BookReply")
    _field(reply, "book", 1, F.TYPE_MESSAGE, type_name=f".{PACKAGE}.Book")
    files = _message(file, "GetFileRequest")
    _field(files, "path", 1, F.TYPE_STRING)

    service = file.service.add(name="LibraryService")

    def method(
        name: str, request: str, response: str, **rule: object
    ) -> descriptor_pb2.MethodDescriptorProto:
        added = service.method.add(
            name=name, input_type=f".{PACKAGE}.{request}", output_type=f".{PACKAGE}.{response}"
        )
        http = added.options.Extensions[annotations_pb2.http]
        for key, value in rule.items():
            if key != "additional":
                setattr(http, key, value)
        for extra in rule.get("additional", ()):  # type: ignore[attr-defined]
            binding = http.additional_bindings.add()
            for key, value in extra.items():
                setattr(binding, key, value)
        return added

    method("GetBook", "GetBookRequest", "Book", get="/v1/{name=shelves/*/books/*}")
    method(
        "ListBooks",
        "ListBooksRequest",
        "ListBooksResponse",
        get="/v1/shelves/{shelf}/books",
        additional=[{"get": "/v1/books"}],
    )
    method(
        "CreateBook",
        "CreateBookRequest",
        "BookReply",
        post="/v1/shelves/{shelf}/books",
        body="book",
        response_body="book",
    )
    method("UpdateBook", "UpdateBookRequest", "BookReply", patch="/v1/books/{book.id}", body="book")
    method(
        "ArchiveBook",
        "ArchiveBookRequest",
        "BookReply",
        post="/v1/books/{id}:archive",
        body="*",
        response_body="book",
    )
    method("GetFile", "GetFileRequest", "Book", get="/v1/files/{path=**}")
    custom = method("HeadBook", "ArchiveBookRequest", "Book")
    custom.options.Extensions[annotations_pb2.http].custom.kind = "HEAD"
    custom.options.Extensions[annotations_pb2.http].custom.path = "/v1/books/{id}"
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(file.name)
    except KeyError:
        return pool.AddSerializedFile(file.SerializeToString())
