"""Round robin, power of two choices and EWMA, subsets, and outcome classification."""

from __future__ import annotations

import random
from collections import Counter

import grpc
import pytest

from mesh.balancer.base import Outcome, is_transport_failure
from mesh.balancer.p2c import PowerOfTwoChoices
from mesh.balancer.round_robin import RoundRobin
from mesh.balancer.subset import subset
from mesh.registry.base import ServiceInstance


def endpoints(count: int, tags: tuple[str, ...] = ()) -> tuple[ServiceInstance, ...]:
    return tuple(ServiceInstance(f"e{i}", "svc", "127.0.0.1", 10000 + i, tags) for i in range(count))


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_round_robin_visits_each_endpoint_in_turn() -> None:
    eps = endpoints(3)
    balancer = RoundRobin(random.Random(1))
    picks = [balancer.pick(eps).endpoint for _ in range(9)]
    assert Counter(picks) == {e: 3 for e in eps}
    assert picks[:3] == picks[3:6] == picks[6:]


def test_round_robin_survives_a_shrinking_set() -> None:
    balancer = RoundRobin(random.Random(2))
    for _ in range(5):
        balancer.pick(endpoints(5))
    one = endpoints(1)
    assert balancer.pick(one).endpoint == one[0]


def test_p2c_prefers_the_endpoint_with_fewer_calls_in_flight() -> None:
    eps = endpoints(2)
    balancer = PowerOfTwoChoices(rng=random.Random(3))
    held = [balancer.pick((eps[0],)) for _ in range(3)]  # three calls stuck on e0
    picks = [balancer.pick(eps) for _ in range(2)]
    assert [p.endpoint for p in picks] == [eps[1], eps[1]]
    assert balancer.outstanding(eps[0]) == 3
    assert balancer.outstanding(eps[1]) == 2
    for p in held + picks:
        p.done(Outcome(grpc.StatusCode.OK))
    assert balancer.outstanding(eps[0]) == balancer.outstanding(eps[1]) == 0


def test_p2c_never_compares_an_endpoint_with_itself() -> None:
    eps = endpoints(2)
    balancer = PowerOfTwoChoices(rng=random.Random(4))
    balancer.pick((eps[0],))  # one call stuck on e0
    # With two endpoints both are always drawn, so the idle one always wins.
    for _ in range(50):
        endpoint, done = balancer.pick(eps)
        assert endpoint == eps[1]
        done(Outcome(grpc.StatusCode.OK))


def test_p2c_spreads_sequential_calls_over_all_endpoints() -> None:
    eps = endpoints(3)
    balancer = PowerOfTwoChoices(rng=random.Random(5))
    counts: Counter[ServiceInstance] = Counter()
    for _ in range(3000):
        endpoint, done = balancer.pick(eps)
        counts[endpoint] += 1
        done(Outcome(grpc.StatusCode.OK))
    assert all(900 <= c <= 1100 for c in counts.values()), counts


def test_p2c_ewma_avoids_the_slow_endpoint_when_nothing_is_in_flight() -> None:
    eps = endpoints(2)
    clock = FakeClock()
    balancer = PowerOfTwoChoices(ewma=True, rng=random.Random(6), clock=clock)
    for endpoint, latency in ((eps[0], 0.200), (eps[1], 0.010)):
        balancer.pick((endpoint,)).done(Outcome(grpc.StatusCode.OK, latency))
    picks = Counter(balancer.pick(eps).endpoint for _ in range(20))
    assert picks == {eps[1]: 20}


def test_p2c_ewma_reacts_to_a_slowdown_at_once_and_recovers_gradually() -> None:
    eps = endpoints(1)
    clock = FakeClock()
    balancer = PowerOfTwoChoices(ewma=True, decay_seconds=10.0, clock=clock)
    balancer.pick(eps).done(Outcome(grpc.StatusCode.OK, 0.010))
    balancer.pick(eps).done(Outcome(grpc.StatusCode.OK, 0.500))
    load = balancer._loads[eps[0].target]
    assert load.ewma == pytest.approx(0.500)
    clock.now += 10.0
    balancer.pick(eps).done(Outcome(grpc.StatusCode.OK, 0.010))
    assert 0.010 < load.ewma < 0.500
    assert load.ewma == pytest.approx(0.500 * 0.3679 + 0.010 * 0.6321, rel=1e-3)


def test_p2c_transport_failures_do_not_make_an_endpoint_look_fast() -> None:
    eps = endpoints(1)
    balancer = PowerOfTwoChoices(ewma=True, clock=FakeClock())
    balancer.pick(eps).done(Outcome(grpc.StatusCode.OK, 0.100))
    balancer.pick(eps).done(Outcome(grpc.StatusCode.UNAVAILABLE, 0.0001, transport_failure=True))
    assert balancer._loads[eps[0].target].ewma == pytest.approx(0.100)


def test_p2c_forgets_endpoints_that_left() -> None:
    eps = endpoints(3)
    balancer = PowerOfTwoChoices()
    for endpoint in eps:
        balancer.pick((endpoint,))
    balancer.update(eps[:1])
    assert set(balancer._loads) == {eps[0].target}


def test_subset_keeps_endpoints_with_every_wanted_tag() -> None:
    v1 = endpoints(2, ("v1",))
    v2 = (ServiceInstance("x", "svc", "127.0.0.1", 20000, ("v2", "canary")),)
    assert subset(v1 + v2, ()) == v1 + v2
    assert subset(v1 + v2, ("v2",)) == v2
    assert subset(v1 + v2, ("v2", "canary")) == v2
    assert subset(v1 + v2, ("v3",)) == ()


@pytest.mark.parametrize(
    ("details", "transport"),
    [
        (
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Connection refused",
            True,
        ),
        ("Stream removed (Socket closed)", True),
        ("recvmsg:Connection reset by peer", True),
        ("Cancelling all calls", False),
        ("inventory database is unavailable", False),
        (None, False),
    ],
)
def test_transport_failures_are_told_apart_from_application_unavailable(
    details: str | None, transport: bool
) -> None:
    assert is_transport_failure(grpc.StatusCode.UNAVAILABLE, details) is transport


def test_only_unavailable_and_a_bare_cancel_can_be_transport_failures() -> None:
    assert not is_transport_failure(grpc.StatusCode.INTERNAL, "Socket closed")
    assert is_transport_failure(grpc.StatusCode.CANCELLED, "CANCELLED")  # refused by a stopping server
    assert not is_transport_failure(grpc.StatusCode.CANCELLED, "handler gave up")
    assert Outcome(grpc.StatusCode.UNAVAILABLE).gateway_failure
    assert not Outcome(grpc.StatusCode.NOT_FOUND).gateway_failure


def test_service_instance_is_frozen_hashable_and_targets_ipv6() -> None:
    a = ServiceInstance("a", "svc", "::1", 50051, ["t"], {"version": "1"})  # type: ignore[arg-type]
    assert a.target == "[::1]:50051"
    assert a.tags == ("t",)
    assert hash(a) == hash(ServiceInstance("a", "svc", "::1", 50051, ("t",), {"version": "1"}))
    with pytest.raises(TypeError):
        a.meta["version"] = "2"  # type: ignore[index]
    assert ServiceInstance.from_target("svc", "127.0.0.1:80").target == "127.0.0.1:80"
    with pytest.raises(ValueError):
        ServiceInstance.from_target("svc", "no-port")
