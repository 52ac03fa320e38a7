"""``google.api.http`` rules read from descriptors: one :class:`Binding` per HTTP form.

Nothing here is written per RPC: a new method with an http rule becomes a route when its
generated module is loaded. Each rule is checked against its messages when read (the body
and response_body fields exist at the top level, path variables name singular scalar
fields), so a broken rule fails the start with a message naming the method.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor, MethodDescriptor

from gateway.template import PathTemplate, TemplateError, parse_template


class RuleError(ValueError):
    """An http rule that cannot be served; the message names the method and the problem."""


@dataclass(frozen=True)
class Binding:
    """One HTTP form of one RPC (the rule itself or one of its additional_bindings)."""

    method: MethodDescriptor
    http_method: str
    template: PathTemplate
    body: str
    response_body: str
    index: int = 0

    @property
    def rpc(self) -> str:
        """Full RPC name, e.g. ``shop.user.v1.UserService.Login``."""
        return str(self.method.full_name)

    @property
    def grpc_path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def server_streaming(self) -> bool:
        return bool(self.method.server_streaming)

    @property
    def body_field(self) -> FieldDescriptor | None:
        if self.body in ("", "*"):
            return None
        return self.method.input_type.fields_by_name[self.body]

    @property
    def response_field(self) -> FieldDescriptor | None:
        if not self.response_body:
            return None
        return self.method.output_type.fields_by_name[self.response_body]

    def describe(self) -> str:
        extra = f" (additional binding {self.index})" if self.index else ""
        return f"{self.http_method} {self.template.source} -> {self.rpc}{extra}"


def resolve_field_path(message: Descriptor, path: Iterable[str]) -> list[FieldDescriptor]:
    """The field chain of ``a.b.c`` (proto names); RuleError when a step does not exist."""
    chain: list[FieldDescriptor] = []
    current: Descriptor | None = message
    for name in path:
        if current is None:
            raise RuleError(f"{'.'.join(path)}: {chain[-1].name} is not a message")
        field = current.fields_by_name.get(name)
        if field is None:
            raise RuleError(f"{'.'.join(path)}: {current.full_name} has no field {name!r}")
        if chain and chain[-1].is_repeated:
            raise RuleError(f"{'.'.join(path)}: {chain[-1].name} is repeated")
        chain.append(field)
        current = field.message_type
    return chain


def _check(method: MethodDescriptor, binding: Binding) -> None:
    where = binding.describe()
    if method.client_streaming:
        raise RuleError(f"{where}: client-streaming RPCs cannot be transcoded")
    if binding.body not in ("", "*") and binding.body not in method.input_type.fields_by_name:
        raise RuleError(f"{where}: body field {binding.body!r} is not a top-level request field")
    if binding.response_body and binding.response_body not in method.output_type.fields_by_name:
        raise RuleError(f"{where}: response_body {binding.response_body!r} is not a top-level response field")
    for variable in binding.template.variables:
        try:
            chain = resolve_field_path(method.input_type, variable.field_path)
        except RuleError as error:
            raise RuleError(f"{where}: path variable {error}") from None
        leaf = chain[-1]
        if leaf.is_repeated or leaf.type in (
            FieldDescriptor.TYPE_MESSAGE,
            FieldDescriptor.TYPE_GROUP,
        ):
            raise RuleError(f"{where}: path variable {variable.name} must be a singular scalar field")


def _one(method: MethodDescriptor, rule: http_pb2.HttpRule, index: int) -> Binding:
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        raise RuleError(f"{method.full_name}: http rule without a pattern")
    if pattern == "custom":
        http_method, path = rule.custom.kind.upper(), rule.custom.path
        if not http_method.isalpha():
            raise RuleError(f"{method.full_name}: custom kind {rule.custom.kind!r} is not an HTTP method")
    else:
        http_method, path = pattern.upper(), getattr(rule, pattern)
    try:
        template = parse_template(path)
    except TemplateError as error:
        raise RuleError(f"{method.full_name}: {error}") from None
    binding = Binding(method, http_method, template, rule.body, rule.response_body, index)
    _check(method, binding)
    return binding


def bindings_of_method(method: MethodDescriptor) -> list[Binding]:
    """Every HTTP form of ``method`` (none when it has no http rule)."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return []
    rule = options.Extensions[annotations_pb2.http]
    bindings = [_one(method, rule, 0)]
    for number, extra in enumerate(rule.additional_bindings, start=1):
        if extra.additional_bindings:
            raise RuleError(f"{method.full_name}: additional_bindings cannot nest")
        bindings.append(_one(method, extra, number))
    return bindings


def bindings_of_files(files: Iterable[FileDescriptor]) -> Iterator[Binding]:
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                yield from bindings_of_method(method)


def load_files(modules: Iterable[str]) -> list[FileDescriptor]:
    """Import generated ``*_pb2`` modules and return their file descriptors."""
    files = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            raise RuleError(f"cannot import descriptor module {name!r}: {error}") from None
        files.append(module.DESCRIPTOR)
    return files


def upstream_of(binding: Binding) -> str:
    """The upstream (service) name of a binding: ``shop.order.v1`` -> ``order``."""
    package = binding.method.containing_service.file.package.split(".")
    if len(package) >= 2 and package[-1].startswith("v") and package[-1][1:2].isdigit():
        return str(package[-2])
    return str(package[-1])
