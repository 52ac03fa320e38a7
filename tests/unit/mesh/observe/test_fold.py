"""Folding every instance's rates into the view: services, edges (proto -> Consul name), resilience, sagas."""

from __future__ import annotations

import pytest

from mesh.observe.fold import InstanceSample, ProtoNames, fold
from mesh.observe.golden import increases
from mesh.observe.model import InstanceView, as_json
from mesh.observe.scrape import Scrape, parse
from tests.unit.mesh.observe.expositions import counter, gauge, rpc

USER = "shop.user.v1.UserService"
INVENTORY = "shop.inventory.v1.InventoryService"
PAYMENT = "shop.payment.v1.PaymentService"
HEALTH = "grpc.health.v1.Health"


def instance(service: str, number: int = 1, health: str = "passing") -> InstanceView:
    return InstanceView(
        service, f"{service}-{number}", "127.0.0.1", 5000 + number, "node-a", health, 9000, True
    )


def sample(view: InstanceView, before: str | None, now: str, seconds: float = 10.0) -> InstanceSample:
    scrape = parse(now)
    if before is None:
        return InstanceSample(view, scrape)
    rates = {key: grown / seconds for key, grown in increases(scrape, parse(before)).items()}
    return InstanceSample(view, scrape, rates, seconds)


def test_inbound_sums_the_instances_and_leaves_health_checks_out() -> None:
    one = sample(
        instance("user", 1),
        rpc("server", USER, codes={"OK": 100}, buckets=(0, 50, 100, 100, 100, 100))
        + rpc("server", HEALTH, "Check", codes={"OK": 5}),
        rpc("server", USER, codes={"OK": 180}, buckets=(0, 90, 180, 180, 180, 180))
        + rpc("server", HEALTH, "Check", codes={"OK": 900}),
    )
    two = sample(
        instance("user", 2),
        rpc("server", USER, codes={"OK": 10, "INTERNAL": 0}, buckets=(0, 5, 10, 10, 10, 10)),
        rpc("server", USER, codes={"OK": 20, "INTERNAL": 10}, buckets=(0, 5, 30, 30, 30, 30)),
    )
    view = fold(1.0, ["user"], [one, two], ProtoNames())
    (user,) = view.services
    assert len(user.instances) == 2
    assert user.inbound.requests_per_second == pytest.approx((80 + 20) / 10)
    assert user.inbound.success_rate == pytest.approx(90 / 100)
    # 100 calls: 40 <= 10 ms, 100 <= 25 ms -> p50 = 10 + 15 * (50 - 40) / 60
    assert user.inbound.p50_ms == pytest.approx(10 + 15 * 10 / 60)
    assert view.window_seconds == 10.0


def test_first_sample_has_no_rates_but_shows_every_service_and_edge() -> None:
    order = sample(instance("order"), None, rpc("client", USER, codes={"OK": 5}))
    user = sample(instance("user"), None, rpc("server", USER, codes={"OK": 5}))
    view = fold(1.0, ["order", "user", "idle"], [order, user], ProtoNames())
    assert [s.name for s in view.services] == ["idle", "order", "user"]
    assert view.window_seconds == 0.0
    assert all(s.inbound.requests_per_second == 0 and s.inbound.success_rate is None for s in view.services)
    assert [(e.source, e.target, e.golden.p99_ms) for e in view.edges] == [("order", "user", None)]


def test_edges_are_named_by_the_consul_service_serving_the_proto() -> None:
    order = sample(
        instance("order"),
        rpc("client", USER, codes={"OK": 0}) + rpc("client", INVENTORY, codes={"OK": 0}),
        rpc("client", USER, codes={"OK": 20}, buckets=(20, 20, 20, 20, 20, 20))
        + rpc("client", INVENTORY, codes={"OK": 5, "UNAVAILABLE": 5})
        + rpc("client", HEALTH, "Check", codes={"OK": 3}),
    )
    users = sample(instance("accounts"), None, rpc("server", USER, codes={"OK": 1}))
    stock = sample(instance("stock"), None, rpc("server", INVENTORY, codes={"OK": 1}))
    view = fold(1.0, ["order", "accounts", "stock"], [order, users, stock], ProtoNames())
    edges = {(e.source, e.target): e.golden for e in view.edges}
    assert set(edges) == {("order", "accounts"), ("order", "stock")}  # no health edge
    assert edges[("order", "accounts")].requests_per_second == 2.0
    assert edges[("order", "accounts")].success_rate == 1.0
    assert edges[("order", "accounts")].p50_ms == pytest.approx(2.5)
    assert edges[("order", "stock")].success_rate == 0.5


def test_a_callee_without_metrics_is_named_from_the_callers_channels_or_left_as_proto() -> None:
    channels = gauge("mesh_endpoints", 1, target_service="payment") + gauge(
        "mesh_endpoints", 1, target_service="user"
    )
    caller = rpc("client", PAYMENT, codes={"OK": 1}) + rpc("client", "x.Unknown", codes={"OK": 1}) + channels
    user = sample(instance("user"), None, rpc("server", USER, codes={"OK": 1}))
    view = fold(1.0, ["order", "user"], [sample(instance("order"), None, caller), user], ProtoNames())
    assert {(e.source, e.target) for e in view.edges} == {("order", "payment"), ("order", "x.Unknown")}


def test_a_single_unknown_proto_pairs_with_the_single_unknown_channel() -> None:
    protos = ProtoNames()
    protos.hint(["acme.Billing"], ["payments", "user"])
    assert protos.target("acme.Billing") == "acme.Billing"  # two channels left: no guess
    protos.hint(["acme.Billing"], ["payments"])
    assert protos.target("acme.Billing") == "payments"


def test_resilience_folds_breakers_ejections_and_rates_per_caller_and_target() -> None:
    def mesh(retries: float, fail_fast: float) -> str:
        return (
            gauge("mesh_circuit_breaker_state", 2, target_service="payment", endpoint="10.0.0.1:5001")
            + gauge("mesh_circuit_breaker_state", 1, target_service="payment", endpoint="")
            + gauge("mesh_circuit_breaker_state", 0, target_service="payment", endpoint="10.0.0.2:5001")
            + gauge("mesh_outlier_ejected_endpoints", 1, target_service="payment")
            + counter("mesh_client_retries", retries, target_service="payment")
            + counter("mesh_client_fail_fast", fail_fast, target_service="payment")
            + counter("mesh_client_retries", 0, target_service="user")
        )

    one = sample(instance("order", 1), mesh(0, 0), mesh(20, 10))
    two = sample(instance("order", 2), mesh(5, 0), mesh(15, 0))
    view = fold(1.0, ["order"], [one, two], ProtoNames())
    rows = {(r.source, r.target): r for r in view.resilience}
    assert set(rows) == {("order", "payment"), ("order", "user")}
    payment = rows[("order", "payment")]
    assert payment.open_breakers == ("10.0.0.1:5001",)
    assert payment.half_open_breakers == ("",)  # the service-wide breaker
    assert payment.ejected_endpoints == 2  # one per instance
    assert payment.retries_per_second == pytest.approx(3.0)
    assert payment.fail_fast_per_second == pytest.approx(1.0)
    assert rows[("order", "user")].open_breakers == ()


def saga_metrics(forward: int, retrying: int, age: float, compensations: float) -> str:
    return (
        "# TYPE shop_saga_in_flight gauge\n"
        f'shop_saga_in_flight{{state="forward"}} {forward}\n'
        'shop_saga_in_flight{state="compensating"} 0\n'
        f'shop_saga_in_flight{{state="retrying"}} {retrying}\n'
        f"# TYPE shop_saga_oldest_in_flight_age_seconds gauge\nshop_saga_oldest_in_flight_age_seconds {age}\n"
        + counter("shop_saga_compensations", compensations, step="release_stock", outcome="compensated")
    )


def test_sagas_sum_the_order_instances_and_are_none_without_saga_metrics() -> None:
    one = sample(instance("order", 1), saga_metrics(1, 0, 3, 0), saga_metrics(1, 1, 4.5, 10))
    two = sample(instance("order", 2), saga_metrics(0, 0, 0, 0), saga_metrics(0, 0, 0, 0))
    sagas = fold(1.0, ["order"], [one, two], ProtoNames()).sagas
    assert sagas is not None
    assert dict(sagas.in_flight_by_state) == {"compensating": 0, "forward": 1, "retrying": 1}
    assert sagas.oldest_age_seconds == 4.5  # an instance with none in flight does not count
    assert sagas.compensations_per_second == pytest.approx(1.0)
    none = fold(1.0, ["user"], [sample(instance("user"), None, rpc("server", USER))], ProtoNames())
    assert none.sagas is None


def test_an_instance_that_was_not_scraped_is_listed_and_counts_nothing() -> None:
    down = InstanceSample(
        InstanceView("user", "user-9", "127.0.0.1", 5009, "n", "critical", 9009, False, "ConnectionRefused")
    )
    view = fold(1.0, ["user"], [down], ProtoNames())
    (user,) = view.services
    assert user.instances[0].error == "ConnectionRefused"
    assert user.inbound.requests_per_second == 0 and view.edges == ()


def test_the_gateway_inbound_is_its_http_requests_without_probes() -> None:
    def http(ok: int, failed: int, probes: int) -> str:
        return (
            "# TYPE gateway_requests_total counter\n"
            f'gateway_requests_total{{route="/v1/orders",method="POST",status="200"}} {ok}\n'
            f'gateway_requests_total{{route="/v1/orders",method="POST",status="503"}} {failed}\n'
            f'gateway_requests_total{{route="/healthz",method="GET",status="200"}} {probes}\n'
        )

    gateway = sample(instance("gateway"), http(0, 0, 0), http(30, 10, 500))
    (view,) = fold(1.0, ["gateway"], [gateway], ProtoNames()).services
    assert view.inbound.requests_per_second == pytest.approx(4.0)
    assert view.inbound.success_rate == pytest.approx(0.75)


def test_scrape_defaults_are_empty() -> None:
    assert Scrape().families == frozenset() and list(Scrape().series("x")) == []


def test_a_folded_view_with_sagas_turns_into_json() -> None:
    order = sample(instance("order"), None, saga_metrics(1, 0, 2.0, 0))
    data = as_json(fold(1.0, ["order"], [order], ProtoNames()))
    assert data["sagas"]["in_flight_by_state"] == {"compensating": 0, "forward": 1, "retrying": 0}
