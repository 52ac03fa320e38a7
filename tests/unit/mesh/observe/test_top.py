"""``mesh top``'s frame and command line: what an operator reads, and the options it takes."""

from __future__ import annotations

import io
import json

import pytest

from mesh import cli
from mesh.observe import top
from mesh.observe.model import (
    EdgeView,
    Golden,
    InstanceView,
    MeshView,
    ResilienceView,
    SagaView,
    ServiceView,
)


def view() -> MeshView:
    user = InstanceView("user", "user-1", "127.0.0.1", 5001, "node-a", "passing", 9001, True)
    down = InstanceView(
        "user", "user-2", "127.0.0.1", 5002, "node-b", "critical", 9002, False, "TimeoutError"
    )
    return MeshView(
        at=0.0,
        window_seconds=2.0,
        services=(ServiceView("user", (user, down), Golden(12.5, 0.995, 3.25, 41.0)),),
        edges=(EdgeView("order", "user", Golden(6.0, 1.0, 2.0, 1500.0)),),
        resilience=(
            ResilienceView("order", "payment", open_breakers=("", "10.0.0.1:5001"), retries_per_second=0.5),
            ResilienceView("order", "user"),  # quiet: not shown
        ),
        sagas=SagaView({"forward": 2, "retrying": 0}, 12.0, 0.25),
    )


def test_a_frame_shows_services_edges_trouble_and_sagas() -> None:
    frame = top.render(view(), "http://127.0.0.1:8500")
    assert "window 2.0s" in frame
    service = next(line for line in frame.splitlines() if line.startswith("user "))
    assert service.split() == ["user", "1/2", "12.5", "99.50%", "3.2ms", "41.0ms"]
    edge = next(line for line in frame.splitlines() if line.startswith("order -> user"))
    assert edge.split()[-4:] == ["6.0", "100.00%", "2.0ms", "1.50s"]
    assert "order -> payment: open (service), 10.0.0.1:5001; retries 0.50/s" in frame
    assert "order -> user:" not in frame
    assert "SAGAS not terminal: forward 2; oldest 12.0s; compensations 0.25/s" in frame
    assert "user-2" not in frame and "127.0.0.1:5002  critical" in frame and "metrics: TimeoutError" in frame


def test_a_first_frame_and_a_consul_outage_say_so() -> None:
    frame = top.render(MeshView(at=0.0, window_seconds=0.0, consul_error="refused"))
    assert "first sample: no rates yet" in frame
    assert "CONSUL UNREACHABLE (showing the last view): refused" in frame
    assert "-" in top.render(MeshView(0.0, 1.0, (ServiceView("x", ()),)))


def test_the_top_command_takes_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, dict[str, object]]] = []

    def fake_run_top(consul: str, **options: object) -> int:
        calls.append((consul, options))
        return 0

    monkeypatch.setattr(top, "run_top", fake_run_top)
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "secret")
    assert cli.main(["top", "--consul", "http://c:8500", "--interval", "0.5", "--json"]) == 0
    assert calls[-1] == (
        "http://c:8500",
        {"token": "secret", "interval": 0.5, "window": 10.0, "as_json_output": True, "once": False},
    )
    assert cli.main(["top", "--once"]) == 0 and calls[-1][1]["once"] is True
    assert cli.main(["top", "--interval", "0"]) == 2
    with pytest.raises(SystemExit):
        cli.main(["top", "--once", "--json"])


async def test_json_mode_prints_one_sample_after_an_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    samples: list[MeshView] = []

    class FakeObserver:
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.consul_address = "c"

        async def sample(self) -> MeshView:
            samples.append(view() if samples else MeshView(0.0, 0.0))
            return samples[-1]

        async def close(self) -> None:
            pass

    monkeypatch.setattr(top, "MeshObserver", FakeObserver)
    out = io.StringIO()
    assert await top._run("c", "", 0.01, 10.0, "json", out) == 0
    assert len(samples) == 2
    data = json.loads(out.getvalue())
    assert data["services"][0]["name"] == "user" and data["window_seconds"] == 2.0
