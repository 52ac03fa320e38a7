"""The fleet scales and restarts real (tiny) processes through a running Supervisor.

The instances are ``sleep``-like Python processes, readiness and Consul's passing set are
no-ops: what is tested is the order of things (drain before start, the companion of a lone
instance, newest removed first, one change at a time) and that nothing the fleet stops on
purpose is mistaken for a crash by the supervisor.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from mesh.server.runtime import EXIT_PORT_UNAVAILABLE
from services.fleet import Busy, Fleet, FleetError
from services.launcher import Child as LaunchedChild
from services.launcher import LaunchError, ready_or_again
from services.supervisor import Supervisor

SLEEPER = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, lambda *a: exit(0)); print('ready', flush=True); "
    "time.sleep(120)",
]


def sleeper() -> subprocess.Popen[bytes]:
    """A sleeper that already exits cleanly on SIGTERM: a SIGTERM that came before Python had
    installed the handler killed it (-15), and the test read a clean stop as a crash."""
    process = subprocess.Popen(SLEEPER, stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    process.stdout.close()
    return process


@dataclass
class Child:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    respawn: Callable[[], subprocess.Popen[bytes]] = sleeper
    ready: Callable[[subprocess.Popen[bytes]], None] = lambda process: None
    history: list[int] = field(default_factory=list)
    address: str = "127.0.0.1"


@dataclass
class Shop:
    fleet: Fleet[Child]
    children: list[Child]
    said: list[str]
    passing_waits: list[list[str]]
    supervisor: Supervisor


@pytest.fixture
def shop() -> Iterator[Shop]:
    said: list[str] = []
    supervisor = Supervisor(say=said.append)
    ports = iter(range(20_000, 20_100))
    children = [Child("inventory", next(ports), sleeper()), Child("order", next(ports), sleeper())]
    for child in children:
        supervisor.watch(child, child.respawn, child.ready)
    waits: list[list[str]] = []

    def wait_passing(instances: Sequence[Child]) -> None:
        waits.append([f"{c.name}:{c.port}" for c in instances])

    fleet = Fleet(
        supervisor,
        children,
        lambda name: Child(name, next(ports), sleeper()),
        wait_passing,
        ("inventory", "order"),
        say=said.append,
        stop_within=10,
    )
    stop = threading.Event()
    running = threading.Thread(target=supervisor.run, kwargs={"until": stop.is_set}, daemon=True)
    running.start()
    try:
        yield Shop(fleet, children, said, waits, supervisor)
    finally:
        stop.set()
        running.join(10)
        for child in children:
            child.process.kill()
            child.process.wait()


def ports_of(shop: Shop, name: str) -> list[int]:
    return [c.port for c in shop.children if c.name == name]


def test_scale_up_starts_supervised_instances_and_waits_for_each_to_pass(shop: Shop) -> None:
    shop.fleet.scale("inventory", 3)
    assert ports_of(shop, "inventory") == [20_000, 20_002, 20_003]
    assert shop.passing_waits == [["inventory:20002"], ["inventory:20003"]]
    added = [c for c in shop.children if c.port in (20_002, 20_003)]
    assert all(shop.supervisor.watching(c) and c.process.poll() is None for c in added)
    assert "  inventory: 3 instance(s)" in shop.said


def test_an_instance_that_lost_its_port_before_binding_is_replaced_on_fresh_ports(shop: Shop) -> None:
    """Through the launcher's serve: the first start finds its port taken (the exit status says
    so) and is never supervised nor counted; a start on fresh ports is the instance added."""
    fresh = iter(range(20_050, 20_060))

    def exited_for_its_port(process: subprocess.Popen[bytes]) -> None:
        process.wait(30)
        raise LaunchError(f"exited with {process.returncode}")

    def lost_then_fresh(name: str) -> LaunchedChild:
        lost = subprocess.Popen([sys.executable, "-c", f"raise SystemExit({EXIT_PORT_UNAVAILABLE})"])
        return LaunchedChild(
            name,
            20_040,
            lost,
            sleeper,
            exited_for_its_port,
            again=lambda: LaunchedChild(name, next(fresh), sleeper(), sleeper, lambda process: None),
        )

    shop.fleet._start_instance = lost_then_fresh  # type: ignore[assignment]  # the launcher's kind
    shop.fleet._serve = ready_or_again  # type: ignore[assignment]
    shop.fleet.scale("inventory", 2)
    assert ports_of(shop, "inventory") == [20_000, 20_050]
    (added,) = [c for c in shop.children if c.port == 20_050]
    assert shop.supervisor.watching(added) and added.process.poll() is None
    assert shop.passing_waits == [["inventory:20050"]]
    assert any("127.0.0.1:20040 or its health port was taken" in line for line in shop.said)
    assert not any("exited" in line for line in shop.said)  # never supervised, so no crash to restart


def test_scale_down_drains_the_newest_first_and_it_is_no_crash(shop: Shop) -> None:
    shop.fleet.scale("inventory", 3)
    newest = [c for c in shop.children if c.name == "inventory"][1:]
    shop.fleet.scale("inventory", 1)
    assert ports_of(shop, "inventory") == [20_000]
    assert [c.process.returncode for c in newest] == [0, 0]  # SIGTERM, a clean exit
    assert not any(shop.supervisor.watching(c) for c in newest)
    assert not any("exited" in line for line in shop.said)  # the supervisor saw no crash


def test_a_lone_instance_is_restarted_in_place_with_a_companion_meanwhile(shop: Shop) -> None:
    (order,) = [c for c in shop.children if c.name == "order"]
    old = order.process
    shop.fleet.restart("order")
    assert old.returncode == 0 and order.process is not old and order.process.poll() is None
    assert order.port == 20_001 and shop.supervisor.watching(order)
    # The companion passed before the old one drained; the restarted one passed before the companion went.
    assert shop.passing_waits == [["order:20002"], ["order:20001"]]
    assert ports_of(shop, "order") == [20_001]
    assert any("SERVING again (1 of 1 restarted)" in line for line in shop.said)


def test_several_instances_restart_one_at_a_time_without_a_companion(shop: Shop) -> None:
    shop.fleet.scale("inventory", 2)
    shop.passing_waits.clear()
    shop.fleet.restart("inventory")
    assert shop.passing_waits == [["inventory:20000"], ["inventory:20002"]]
    assert ports_of(shop, "inventory") == [20_000, 20_002]


def test_an_instance_whose_only_sibling_is_dead_gets_a_companion_too(shop: Shop) -> None:
    shop.fleet.scale("inventory", 2)
    first, second = [c for c in shop.children if c.name == "inventory"]
    shop.supervisor.on_main(lambda: shop.supervisor.unwatch(second))  # given up on, say
    second.process.kill()
    second.process.wait()
    shop.passing_waits.clear()
    shop.fleet.restart("inventory")
    # A companion (20003) before the live one drains; none for the dead one, the first serves.
    assert shop.passing_waits == [["inventory:20003"], ["inventory:20000"], ["inventory:20002"]]
    assert ports_of(shop, "inventory") == [20_000, 20_002]
    assert first.process.poll() is None and second.process.poll() is None


def test_a_given_up_instance_is_started_fresh_by_a_restart(shop: Shop) -> None:
    (order,) = [c for c in shop.children if c.name == "order"]
    shop.supervisor.unwatch(order)  # as after a crash loop: nobody restarts it
    order.process.kill()
    order.process.wait()
    shop.fleet.restart("order")
    assert order.process.poll() is None and shop.supervisor.watching(order)


def test_refusals_name_what_is_wrong(shop: Shop) -> None:
    with pytest.raises(FleetError, match="unknown service 'nosuch'"):
        shop.fleet.scale("nosuch", 2)
    with pytest.raises(FleetError, match="count must be 1 to 16, got 0"):
        shop.fleet.scale("inventory", 0)
    with pytest.raises(FleetError, match="got 17"):
        shop.fleet.scale("inventory", 17)


def test_one_change_at_a_time(shop: Shop) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_passing(instances: Sequence[Child]) -> None:
        entered.set()
        release.wait(10)

    shop.fleet._wait_passing = slow_passing  # type: ignore[assignment]  # this test's slow Consul
    first = threading.Thread(target=shop.fleet.scale, args=("inventory", 2))
    first.start()
    assert entered.wait(10)
    with pytest.raises(Busy):
        shop.fleet.restart("order")
    release.set()
    first.join(10)
    assert ports_of(shop, "inventory") == [20_000, 20_002]


def test_the_changes_lines_reach_its_caller_too(shop: Shop) -> None:
    heard: list[str] = []
    shop.fleet.scale("inventory", 2, heard.append)
    assert heard and heard[-1] == "  inventory: 2 instance(s)"
    assert heard == shop.said[-len(heard) :]
