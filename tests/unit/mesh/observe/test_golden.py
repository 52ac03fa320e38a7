"""Parsing an exposition and the arithmetic of two scrapes: increases, resets, quantiles, golden signals.

The quantiles are checked against what Prometheus' ``histogram_quantile`` answers for the
same buckets (linear interpolation inside the bucket; the first bucket starts at 0; a rank in
``+Inf`` answers the highest finite bound).
"""

from __future__ import annotations

import math

import pytest

from mesh.observe.golden import Calls, increases, quantile, restarted
from mesh.observe.model import Golden
from mesh.observe.scrape import family_of, labels_of, parse
from tests.unit.mesh.observe.expositions import counter, gauge, rpc

PROTO = "shop.user.v1.UserService"


def handled_key(code: str, side: str = "server") -> tuple[str, tuple[tuple[str, str], ...]]:
    labels = {"grpc_service": PROTO, "grpc_method": "Get", "grpc_type": "unary", "grpc_code": code}
    return (f"grpc_{side}_handled_total", labels_of(labels))


def test_parse_keeps_values_created_times_families_and_which_samples_only_grow() -> None:
    scrape = parse(rpc("server", PROTO, codes={"OK": 3}, buckets=(1, 2, 3, 3, 3, 3)) + gauge("g", 7))
    assert scrape.values[handled_key("OK")] == 3
    assert handled_key("OK") in scrape.monotonic
    assert ("g", ()) in scrape.values and ("g", ()) not in scrape.monotonic
    assert {"grpc_server_handled", "grpc_server_handling_seconds", "g"} <= scrape.families
    assert scrape.created_at(*handled_key("OK")) == 1.0
    assert not any(name.endswith("_created") for name, _ in scrape.values)
    bucket = [k for k in scrape.monotonic if k[0] == "grpc_server_handling_seconds_bucket"]
    assert len(bucket) == 6


def test_a_family_without_samples_is_still_seen() -> None:
    assert "shop_saga_in_flight" in parse("# TYPE shop_saga_in_flight gauge\n").families


def test_family_names_of_samples() -> None:
    assert family_of("x_total") == "x"
    assert [family_of(f"h_{s}") for s in ("bucket", "count", "sum")] == ["h", "h", "h"]
    assert family_of("gauge") == "gauge"


def test_parse_refuses_what_is_not_the_text_format() -> None:
    with pytest.raises(ValueError):
        parse("this is {not metrics\n")


def test_increases_are_the_difference_and_a_new_series_counts_whole() -> None:
    before = parse(rpc("server", PROTO, codes={"OK": 10}))
    now = parse(rpc("server", PROTO, codes={"OK": 15, "NOT_FOUND": 2}))
    grown = increases(now, before)
    assert grown[handled_key("OK")] == 5
    assert grown[handled_key("NOT_FOUND")] == 2  # appeared since: all of it is new
    assert increases(now, None) == {}  # nothing to compare with


def test_a_counter_that_went_back_is_a_reset_and_no_increase_is_negative() -> None:
    before = parse(rpc("server", PROTO, codes={"OK": 100, "INTERNAL": 5}))
    now = parse(rpc("server", PROTO, codes={"OK": 4, "INTERNAL": 7}))
    assert restarted(now, before)
    grown = increases(now, before)
    # The whole process started again: everything it counted is new, INTERNAL too (7, not 2).
    assert grown[handled_key("OK")] == 4 and grown[handled_key("INTERNAL")] == 7
    assert all(value >= 0 for value in grown.values())


def test_a_moved_start_time_is_a_reset_even_when_the_value_grew() -> None:
    before = parse(rpc("server", PROTO, codes={"OK": 3}, created=1.0))
    now = parse(rpc("server", PROTO, codes={"OK": 9}, created=50.0))
    assert restarted(now, before)
    assert increases(now, before)[handled_key("OK")] == 9
    assert not restarted(parse(rpc("server", PROTO, codes={"OK": 9})), before)


def test_gauges_going_down_are_no_reset() -> None:
    before = parse(gauge("mesh_outlier_ejected_endpoints", 2, target_service="x") + counter("c", 1))
    now = parse(gauge("mesh_outlier_ejected_endpoints", 0, target_service="x") + counter("c", 1))
    assert not restarted(now, before)
    assert increases(now, before) == {("c_total", ()): 0}


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        # 10 observations: 4 <= 0.1, 10 <= 0.2 -> the median is in (0.1, 0.2]: 0.1 + 0.1 * (5-4)/6
        (0.5, {0.1: 4, 0.2: 10, math.inf: 10}, 0.1 + 0.1 * 1 / 6),
        (0.5, {0.1: 10, math.inf: 10}, 0.05),  # the first bucket starts at 0
        (0.99, {0.1: 5, 0.2: 5, math.inf: 10}, 0.2),  # in +Inf: the highest finite bound
        (0.5, {0.1: 0, math.inf: 0}, None),  # no observations
        (0.5, {}, None),
        (0.5, {0.1: 4}, None),  # no +Inf bucket: not a histogram
    ],
)
def test_quantile_as_histogram_quantile(
    q: float, buckets: dict[float, float], expected: float | None
) -> None:
    got = quantile(q, buckets)
    assert got == pytest.approx(expected) if expected is not None else got is None


def test_calls_become_golden_signals() -> None:
    calls = Calls()
    calls.handled("OK", 9.0)
    calls.handled("NOT_FOUND", 1.0)
    for le, rate in (("0.005", 0.0), ("0.01", 5.0), ("0.025", 10.0), ("+Inf", 10.0)):
        calls.bucket(le, rate)
    golden = calls.golden()
    assert golden.requests_per_second == 10.0
    assert golden.success_rate == pytest.approx(0.9)
    assert golden.p50_ms == pytest.approx(10.0)
    assert golden.p99_ms == pytest.approx(10.0 + 15.0 * 4.9 / 5)
    assert Calls().golden() == Golden()  # nothing finished: no success rate, no percentiles
