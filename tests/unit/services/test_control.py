"""The launcher's control endpoint over real HTTP on loopback, with the mesh's own client."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.control import ControlFile, read_control_file, request
from services.control import ControlServer
from services.fleet import Busy, FleetError, InstanceView


class RecordingFleet:
    """Stands in for services.fleet.Fleet: records what it was asked, says a line, can refuse."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, ...]] = []
        self.refuse: Exception | None = None

    def instances(self) -> list[InstanceView]:
        return [InstanceView("inventory", "127.0.0.1", 50054, 4242, True, True)]

    def scale(self, service: str, count: int, say: Callable[[str], None] | None = None) -> None:
        self._do(("scale", service, str(count)), say)

    def restart(self, service: str, say: Callable[[str], None] | None = None) -> None:
        self._do(("restart", service), say)

    def _do(self, what: tuple[str, ...], say: Callable[[str], None] | None) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.asked.append(what)
        if say is not None:
            say(f"  did {' '.join(what)}")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ControlServer, ControlFile, RecordingFleet, list[str]]]:
    fleet = RecordingFleet()
    printed: list[str] = []
    server = ControlServer(fleet, say=printed.append)  # type: ignore[arg-type]  # duck-typed fleet
    server.start(tmp_path / "control.json")
    try:
        yield server, read_control_file(tmp_path / "control.json"), fleet, printed
    finally:
        server.close()


def test_scale_and_restart_reach_the_fleet_and_return_its_lines(served: Any) -> None:
    _, control, fleet, printed = served
    answer = request(control, "POST", "/v1/scale", {"service": "inventory", "count": 3})
    assert answer.ok and answer.lines == ("did scale inventory 3",)
    answer = request(control, "POST", "/v1/restart", {"service": "payment"})
    assert answer.ok and answer.lines == ("did restart payment",)
    assert fleet.asked == [("scale", "inventory", "3"), ("restart", "payment")]
    assert printed == ["mesh scale inventory 3:", "mesh restart payment:"]  # the launcher's terminal


def test_instances_are_listed(served: Any) -> None:
    _, control, _, _ = served
    answer = request(control, "GET", "/v1/instances")
    assert answer.ok and answer.data == [
        {
            "name": "inventory",
            "address": "127.0.0.1",
            "port": 50054,
            "pid": 4242,
            "running": True,
            "supervised": True,
        }
    ]


def test_a_wrong_secret_is_refused_and_changes_nothing(served: Any) -> None:
    _, control, fleet, _ = served
    answer = request(ControlFile(control.url, "not-the-secret"), "POST", "/v1/restart", {"service": "order"})
    assert not answer.ok and "bearer secret" in answer.error
    assert fleet.asked == []


@pytest.mark.parametrize(
    ("method", "path", "body", "error"),
    [
        ("POST", "/v1/scale", {"service": "inventory"}, 'want {"service": "<name>", "count": <int>}'),
        ("POST", "/v1/scale", {"service": "inventory", "count": True}, "count"),
        ("POST", "/v1/restart", {}, 'want {"service": "<name>"}'),
        ("POST", "/v1/delete-everything", {}, "no such operation: POST /v1/delete-everything"),
    ],
)
def test_bad_requests_are_refused_with_what_was_wanted(
    served: Any, method: str, path: str, body: dict[str, object], error: str
) -> None:
    _, control, fleet, _ = served
    answer = request(control, method, path, body)
    assert not answer.ok and error in answer.error
    assert fleet.asked == []


@pytest.mark.parametrize(
    ("refusal", "text"),
    [
        (Busy("another change is still running"), "another change"),
        (FleetError("unknown service 'x'"), "unknown"),
    ],
)
def test_the_fleets_refusals_are_answered(served: Any, refusal: Exception, text: str) -> None:
    _, control, fleet, _ = served
    fleet.refuse = refusal
    answer = request(control, "POST", "/v1/restart", {"service": "x"})
    assert not answer.ok and text in answer.error


def test_a_failure_while_changing_is_reported_to_both_sides(served: Any) -> None:
    _, control, fleet, printed = served
    fleet.refuse = TimeoutError("inventory 127.0.0.1:41000 not SERVING after 120 s")
    answer = request(control, "POST", "/v1/scale", {"service": "inventory", "count": 2})
    assert not answer.ok and "not SERVING" in answer.error
    assert any("failed: inventory 127.0.0.1:41000 not SERVING" in line for line in printed)


def test_requests_run_side_by_side(served: Any) -> None:
    _, control, _, _ = served
    answers: list[bool] = []
    threads = [
        threading.Thread(target=lambda: answers.append(request(control, "GET", "/v1/instances").ok))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert answers == [True] * 4
