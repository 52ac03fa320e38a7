"""Outlier ejection pinned by exact sequences against a fake clock (Envoy's defaults)."""

from __future__ import annotations

import grpc
import pytest

from mesh.balancer.base import Outcome
from mesh.balancer.outlier import OutlierBalancer, OutlierDetector, OutlierPolicy
from mesh.balancer.round_robin import RoundRobin
from mesh.registry.base import ServiceInstance

UNAVAILABLE = Outcome(grpc.StatusCode.UNAVAILABLE)
REFUSED = Outcome(grpc.StatusCode.UNAVAILABLE, transport_failure=True)
OK = Outcome(grpc.StatusCode.OK)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def endpoints(count: int) -> tuple[ServiceInstance, ...]:
    return tuple(ServiceInstance(f"e{i}", "svc", "127.0.0.1", 10000 + i) for i in range(count))


def detector(clock: FakeClock, **policy: float) -> OutlierDetector:
    return OutlierDetector(OutlierPolicy(**policy), clock)  # type: ignore[arg-type]


def fail(d: OutlierDetector, endpoint: ServiceInstance, times: int, outcome: Outcome = UNAVAILABLE) -> None:
    for _ in range(times):
        d.record(endpoint, outcome)


def test_four_failures_do_not_eject_the_fifth_does() -> None:
    clock = FakeClock()
    eps = endpoints(10)
    d = detector(clock)
    d.available(eps)
    fail(d, eps[0], 4)
    assert d.available(eps) == eps
    fail(d, eps[0], 1)
    assert eps[0] not in d.available(eps)
    assert d.ejected() == {eps[0].target}


def test_connection_failures_count_like_unavailable() -> None:
    clock = FakeClock()
    eps = endpoints(10)
    d = detector(clock)
    d.available(eps)
    fail(d, eps[0], 2, REFUSED)
    fail(d, eps[0], 3, UNAVAILABLE)
    assert eps[0] not in d.available(eps)


def test_a_success_or_an_application_error_resets_the_count() -> None:
    clock = FakeClock()
    eps = endpoints(10)
    d = detector(clock)
    d.available(eps)
    fail(d, eps[0], 4)
    d.record(eps[0], OK)
    fail(d, eps[0], 4)
    d.record(eps[0], Outcome(grpc.StatusCode.NOT_FOUND))
    fail(d, eps[0], 4)
    assert d.available(eps) == eps


def test_back_after_the_base_time_exactly() -> None:
    clock = FakeClock()
    eps = endpoints(10)
    d = detector(clock)
    d.available(eps)
    fail(d, eps[0], 5)
    clock.advance(29.999)
    assert eps[0] not in d.available(eps)
    clock.advance(0.001)
    assert d.available(eps) == eps


def test_ejection_time_grows_with_each_ejection() -> None:
    clock = FakeClock()
    eps = endpoints(10)
    d = detector(clock)
    d.available(eps)
    for n in (1, 2, 3):
        fail(d, eps[0], 5)
        clock.advance(30.0 * n - 0.001)
        assert eps[0] not in d.available(eps), f"ejection {n} ended early"
        clock.advance(0.001)
        assert eps[0] in d.available(eps), f"ejection {n} lasted too long"


def test_ejection_time_is_capped_at_the_maximum() -> None:
    clock = FakeClock()
    eps = endpoints(10)
    d = detector(clock)
    d.available(eps)
    for n in range(1, 11):  # ejections 1..10 last 30..300 s; it fails again as soon as it is back
        fail(d, eps[0], 5)
        clock.advance(30.0 * n)
    fail(d, eps[0], 5)  # the 11th would be 330 s without the cap
    clock.advance(299.999)
    assert eps[0] not in d.available(eps)
    clock.advance(0.001)
    assert eps[0] in d.available(eps)


def test_time_back_in_service_forgives_earlier_ejections() -> None:
    clock = FakeClock()
    eps = endpoints(10)
    d = detector(clock)
    d.available(eps)
    fail(d, eps[0], 5)
    clock.advance(30.0)
    fail(d, eps[0], 5)  # second ejection: 60 s
    clock.advance(60.0 + 60.0)  # back, then two base periods healthy: both forgiven
    fail(d, eps[0], 5)
    clock.advance(30.0)
    assert eps[0] in d.available(eps)


def test_at_most_the_max_share_is_ejected_but_at_least_one() -> None:
    clock = FakeClock()
    eps = endpoints(10)
    d = detector(clock)  # 10 % of 10 = 1
    d.available(eps)
    fail(d, eps[0], 5)
    fail(d, eps[1], 5)
    assert d.ejected() == {eps[0].target}
    # The count of the endpoint that found no room stays: it goes as soon as there is room.
    clock.advance(30.0)
    assert d.ejected() == frozenset()
    d.record(eps[1], UNAVAILABLE)
    assert d.ejected() == {eps[1].target}

    three = endpoints(3)
    small = detector(FakeClock(), max_ejected_share=0.0)  # 0 % still ejects one
    small.available(three)
    fail(small, three[0], 5)
    fail(small, three[1], 5)
    assert small.ejected() == {three[0].target}


def test_panic_mode_uses_every_endpoint_below_half_healthy() -> None:
    clock = FakeClock()
    eps = endpoints(4)
    d = detector(clock, max_ejected_share=1.0)
    d.available(eps)
    fail(d, eps[0], 5)
    fail(d, eps[1], 5)
    assert d.available(eps) == eps[2:]  # 2 of 4 healthy = 50 %: not below, no panic
    fail(d, eps[2], 5)
    assert d.ejected() == {eps[0].target, eps[1].target, eps[2].target}
    assert d.available(eps) == eps  # 1 of 4 healthy: panic, balance over all


def test_failures_seen_during_panic_do_not_extend_an_ejection() -> None:
    clock = FakeClock()
    eps = endpoints(2)
    d = detector(clock, max_ejected_share=1.0)
    d.available(eps)
    fail(d, eps[0], 5)
    fail(d, eps[0], 50)
    clock.advance(30.0)
    assert d.available(eps) == eps
    assert d.ejected() == frozenset()


def test_balancer_wrapper_skips_ejected_endpoints_and_feeds_the_detector() -> None:
    clock = FakeClock()
    eps = endpoints(2)
    balancer = OutlierBalancer(RoundRobin(), detector(clock, max_ejected_share=0.5))
    for _ in range(10):
        endpoint, done = balancer.pick(eps)
        done(REFUSED if endpoint is eps[0] else OK)
    picks = [balancer.pick(eps) for _ in range(6)]
    assert {p.endpoint for p in picks} == {eps[1]}
    for p in picks:
        p.done(OK)


def test_removed_endpoints_are_forgotten() -> None:
    clock = FakeClock()
    eps = endpoints(2)
    d = detector(clock, max_ejected_share=0.5)
    d.available(eps)
    fail(d, eps[0], 5)
    d.update(eps[1:])
    assert d.ejected() == frozenset()
    d.update(eps)
    fail(d, eps[0], 4)
    assert d.available(eps) == eps


@pytest.mark.parametrize(
    "policy",
    [
        {"consecutive_failures": 0},
        {"base_ejection": 0},
        {"base_ejection": 400, "max_ejection": 300},
        {"max_ejected_share": 1.5},
        {"panic_threshold": -0.1},
    ],
)
def test_invalid_policies_are_rejected(policy: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        OutlierPolicy(**policy)  # type: ignore[arg-type]
