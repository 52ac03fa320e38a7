"""An operator's changes to the running shop: scale a service, restart it one instance at a time.

``mesh scale <service> <n>`` and ``mesh restart <service>`` reach this through the launcher's
control endpoint (services/control.py). Each change keeps the shop serving:

- **scale up** starts the new instances on free ports and returns once each is SERVING and
  passing in Consul (only then do mesh channels pick it); one that found a port taken before
  it bound it is started again on others;
- **scale down** stops the newest instances first (the first one keeps the port the README's
  lines use), each with SIGTERM: it deregisters, turns NOT_SERVING, and drains its calls in
  flight before it exits (mesh/server/lifecycle.py);
- **restart** is rolling: one instance at a time, each drained and stopped, started again on
  the same port and passing in Consul before the next. An instance that is the only one of its
  service still running gets a temporary companion first (Kubernetes' ``maxSurge: 1``), so there is always
  one to call; the companion is drained away at the end. An instance the supervisor had given
  up on (a crash loop) is started fresh.

Processes are started on the supervisor's thread (:meth:`Supervisor.on_main`); the waiting
happens on the caller's thread (the control endpoint's), so the supervisor keeps noticing
deaths meanwhile. One change at a time: a second is refused while one runs.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Generic, Protocol, TypeVar

from services.supervisor import Supervisor

MAX_INSTANCES = 16
"""Per service: a typo (``mesh scale inventory 200``) must not fork the machine to death."""


class Instance(Protocol):
    """What the fleet needs of a launcher child (services.launcher.Child)."""

    name: str
    address: str
    """Where it listens: its host's address (127.0.0.1 on one host)."""
    port: int
    process: subprocess.Popen[bytes]

    @property
    def respawn(self) -> Callable[[], subprocess.Popen[bytes]]:
        """Start it again the same way, on the same port."""

    @property
    def ready(self) -> Callable[[subprocess.Popen[bytes]], None]:
        """Block until this process serves; raise if it does not."""


class FleetError(Exception):
    """The change cannot be made as asked; the message says why (an operator reads it)."""


class Busy(FleetError):
    """Another change is still running."""


@dataclass(frozen=True)
class InstanceView:
    name: str
    address: str
    port: int
    pid: int
    running: bool
    supervised: bool


Child = TypeVar("Child", bound=Instance)
Serve = Callable[[Child, Callable[[str], None], Callable[[Callable[[], Child]], Child]], Child]


def ready_once(
    child: Child, say: Callable[[str], None], spawn: Callable[[Callable[[], Child]], Child]
) -> Child:
    """The plain ``serve``: ``child`` once it is ready, never a replacement."""
    child.ready(child.process)
    return child


class Fleet(Generic[Child]):
    """The launcher's children of each service, as operators change them."""

    def __init__(
        self,
        supervisor: Supervisor,
        children: list[Child],
        start_instance: Callable[[str], Child],
        wait_passing: Callable[[Sequence[Child]], None],
        services: Sequence[str],
        say: Callable[[str], None] = print,
        stop_within: float = 30.0,
        serve: Serve[Child] = ready_once,
    ) -> None:
        """``serve(child, say, spawn)`` blocks until a started instance serves and returns the
        one that does: the launcher's starts a replacement through ``spawn`` when the child
        lost a port it was given to another process before binding it (:func:`ready_once` waits
        for the child alone)."""
        self._supervisor = supervisor
        self._children = children
        self._start_instance = start_instance  # spawns (on the supervisor's thread) on a free port
        self._wait_passing = wait_passing
        self._services = tuple(services)
        self._print = say
        self._listener: Callable[[str], None] | None = None  # the running change's caller
        self._stop_within = stop_within
        self._serve = serve
        self._lock = threading.Lock()

    def instances(self) -> list[InstanceView]:
        return [
            InstanceView(
                c.name,
                c.address,
                c.port,
                c.process.pid,
                c.process.poll() is None,
                self._supervisor.watching(c),
            )
            for c in list(self._children)
        ]

    def scale(self, service: str, count: int, say: Callable[[str], None] | None = None) -> None:
        """Run ``count`` instances of ``service``: start or drain the difference.

        ``say`` hears this change's lines (besides the fleet's own ``say``).
        """
        self._check(service)
        if not 1 <= count <= MAX_INSTANCES:
            raise FleetError(f"count must be 1 to {MAX_INSTANCES}, got {count}")
        with self._exclusive(say):
            current = self._of(service)
            if count == len(current):
                self._say(f"  {service}: already {count} instance(s)")
                return
            for _ in range(count - len(current)):
                self._add(service)
            for child in reversed(current[count:]):
                self._remove(child)
            self._say(f"  {service}: {count} instance(s)")

    def restart(self, service: str, say: Callable[[str], None] | None = None) -> None:
        """Restart every instance of ``service``, one at a time, with always one serving."""
        self._check(service)
        with self._exclusive(say):
            current = self._of(service)
            for number, child in enumerate(current, start=1):
                others = [c for c in self._of(service) if c is not child and c.process.poll() is None]
                surge = None if others else self._add(service)  # never leave the service with none
                self._stop(child)
                self._say(f"{_label(child)}  drained and stopped")
                process = self._supervisor.on_main(child.respawn)
                self._supervisor.on_main(partial(self._watch, child, process))
                child.ready(process)
                self._wait_passing([child])
                self._say(
                    f"{_label(child)}  pid {process.pid}  SERVING again ({number} of {len(current)} restarted)"
                )
                if surge is not None:
                    self._remove(surge)
            self._say(f"  {service}: rolling restart done")

    def _add(self, service: str) -> Child:
        """Start an instance and, once it serves, supervise it and wait until Consul passes it.

        Supervised only once it serves: a start that never serves is killed here and the change
        fails saying why (the supervisor would have restarted, as a crash, an instance the fleet
        never had); one that lost its port to another process is replaced by ``serve``.
        """
        started = [self._supervisor.on_main(lambda: self._start_instance(service))]

        def spawn(start: Callable[[], Child]) -> Child:
            started.append(self._supervisor.on_main(start))
            return started[-1]

        try:
            child = self._serve(started[0], self._say, spawn)
        except BaseException:
            for failed in started:
                if failed.process.poll() is None:
                    failed.process.kill()
                failed.process.wait()
            raise
        self._supervisor.on_main(lambda: self._adopt(child))
        self._wait_passing([child])
        self._say(f"{_label(child)}  pid {child.process.pid}  SERVING (started)")
        return child

    def _adopt(self, child: Child) -> Child:
        self._children.append(child)
        self._supervisor.watch(child, child.respawn, child.ready)
        return child

    def _watch(self, child: Child, process: subprocess.Popen[bytes]) -> None:
        child.process = process
        self._supervisor.watch(child, child.respawn, child.ready)

    def _remove(self, child: Child) -> None:
        self._stop(child)
        self._supervisor.on_main(lambda: self._children.remove(child))
        self._say(f"{_label(child)}  drained and stopped (removed)")

    def _stop(self, child: Child) -> None:
        """Out of supervision, then SIGTERM: it deregisters and drains before it exits."""
        self._supervisor.on_main(lambda: self._supervisor.unwatch(child))
        process = child.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(self._stop_within)
        except subprocess.TimeoutExpired:
            self._say(
                f"{_label(child)}  pid {process.pid}  did not stop within {self._stop_within:g} s; killing it"
            )
            process.kill()
            process.wait()

    def _say(self, line: str) -> None:
        self._print(line)
        if self._listener is not None:
            self._listener(line)

    def _of(self, service: str) -> list[Child]:
        return [c for c in list(self._children) if c.name == service]

    def _check(self, service: str) -> None:
        if service not in self._services:
            raise FleetError(f"unknown service {service!r}: one of {', '.join(self._services)}")

    @contextlib.contextmanager
    def _exclusive(self, listener: Callable[[str], None] | None) -> Iterator[None]:
        if not self._lock.acquire(blocking=False):
            raise Busy("another change is still running; try again when it ends")
        self._listener = listener
        try:
            yield
        finally:
            self._listener = None
            self._lock.release()


def _label(child: Instance) -> str:
    return f"  {child.name:<10} {child.address}:{child.port}"
