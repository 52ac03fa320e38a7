"""Routes come from descriptors: every shop rule is read, broken rules and conflicts are refused."""

from __future__ import annotations

import pytest
from google.api import annotations_pb2, http_pb2  # type: ignore[import-untyped]

from gateway.app import build_routes
from gateway.router import Entry, RouteConflict, Router
from gateway.rules import Binding, RuleError, bindings_of_files, bindings_of_method, load_files, upstream_of
from gateway.settings import DEFAULT_PROTO_MODULES, GatewaySettings
from gateway.template import parse_template
from gateway.upstream import StaticChannelFactory
from shop.order.v1 import order_pb2
from shop.user.v1 import user_pb2
from tests.unit.gateway.library import library_file


def test_every_shop_rpc_with_a_rule_becomes_a_route() -> None:
    bindings = list(bindings_of_files(load_files(DEFAULT_PROTO_MODULES)))
    rpcs = {b.rpc for b in bindings}
    for module in load_files(DEFAULT_PROTO_MODULES):
        for service in module.services_by_name.values():
            for method in service.methods:
                assert method.full_name in rpcs
    update = next(b for b in bindings if b.rpc.endswith("UpdateUser"))
    assert (update.http_method, update.template.source, update.body, update.response_body) == (
        "PATCH",
        "/v1/users/{user.user_id}",
        "user",
        "user",
    )
    watch = next(b for b in bindings if b.rpc.endswith("WatchOrder"))
    assert watch.server_streaming and watch.grpc_path == "/shop.order.v1.OrderService/WatchOrder"
    assert {upstream_of(b) for b in bindings} == {"user", "order", "payment", "inventory", "shipping"}


def test_additional_bindings_and_custom_kinds_are_routes() -> None:
    bindings = list(bindings_of_files([library_file()]))
    listing = [b for b in bindings if b.rpc.endswith("ListBooks")]
    assert [(b.template.source, b.index) for b in listing] == [
        ("/v1/shelves/{shelf}/books", 0),
        ("/v1/books", 1),
    ]
    assert any(b.http_method == "HEAD" for b in bindings)


def _binding_with(rule: http_pb2.HttpRule) -> list[Binding]:
    method = user_pb2.DESCRIPTOR.services_by_name["UserService"].methods_by_name["UpdateUser"]

    class Options:
        def HasExtension(self, _: object) -> bool:
            return True

        @property
        def Extensions(self) -> dict[object, http_pb2.HttpRule]:
            return {annotations_pb2.http: rule}

    class Fake:
        def __getattr__(self, name: str) -> object:
            return getattr(method, name)

        def GetOptions(self) -> Options:
            return Options()

    return bindings_of_method(Fake())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (http_pb2.HttpRule(patch="/v1/users/{nope}", body="user"), "has no field 'nope'"),
        (http_pb2.HttpRule(patch="/v1/users/{user}", body="user"), "singular scalar"),
        (http_pb2.HttpRule(patch="/v1/users/{user.roles}", body="user"), "singular scalar"),
        (http_pb2.HttpRule(patch="/v1/users/{user.user_id}", body="nope"), "body field"),
        (http_pb2.HttpRule(patch="/v1/users/{user.user_id}", response_body="nope"), "response_body"),
        (http_pb2.HttpRule(patch="/v1/users/{user_id"), "expected"),
        (http_pb2.HttpRule(body="*"), "without a pattern"),
    ],
)
def test_broken_rules_are_refused_with_the_method_named(rule: http_pb2.HttpRule, message: str) -> None:
    with pytest.raises(RuleError, match=message) as caught:
        _binding_with(rule)
    assert "UpdateUser" in str(caught.value)


def test_conflicting_rules_are_reported_together() -> None:
    get = order_pb2.DESCRIPTOR.services_by_name["OrderService"].methods_by_name["GetOrder"]
    watch = order_pb2.DESCRIPTOR.services_by_name["OrderService"].methods_by_name["WatchOrder"]
    entries = [
        Entry("GET", parse_template("/v1/orders/{order_id}"), get, "GET /v1/orders/{order_id} -> GetOrder"),
        Entry("GET", parse_template("/v1/orders/{id}"), watch, "GET /v1/orders/{id} -> WatchOrder"),
        Entry("GET", parse_template("/v1/{name=orders/*}"), watch, "GET /v1/{name=orders/*} -> WatchOrder"),
        Entry("POST", parse_template("/v1/orders/{order_id}"), get, "POST is another method: no conflict"),
    ]
    with pytest.raises(RouteConflict) as caught:
        Router(entries)
    assert len(caught.value.conflicts) == 2
    assert "GetOrder" in str(caught.value)


def test_public_methods_must_exist() -> None:
    settings = GatewaySettings(public_methods=frozenset({"shop.user.v1.UserService.Nope"}))
    with pytest.raises(RuleError, match="Nope"):
        build_routes(settings, StaticChannelFactory({}))


def test_routes_know_their_upstream_and_publicity() -> None:
    routes = build_routes(GatewaySettings(), StaticChannelFactory({}))
    public = {r.binding.rpc for r in routes if r.public}
    assert public == {
        "shop.user.v1.UserService.CreateUser",
        "shop.user.v1.UserService.Login",
        "shop.inventory.v1.InventoryService.ListProducts",
        "shop.inventory.v1.InventoryService.GetProduct",
    }
    assert {r.upstream for r in routes if r.binding.rpc.startswith("shop.payment")} == {"payment"}
