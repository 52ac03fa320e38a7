"""Keep ``make run``'s processes running: restart what dies, with CrashLoopBackOff's policy.

One dead instance must not stop the shop. When a watched process exits (and the launcher did
not ask it to), it is started again on the same port after a delay that doubles with each
restart (1 s, 2 s, 4 s … capped at 30 s, as Kubernetes does for a crash-looping container);
an instance that stayed up for a minute is forgiven and starts again from 1 s. Six exits
within three minutes without such a stable run are a crash loop: the supervisor gives up on
that instance, says so, and keeps the rest of the shop serving.

Two layers: ``RestartTracker`` is the pure policy (a clock in, a decision out: testable on a
``ManualClock``); ``Supervisor`` applies it to processes, printing one line per event (exited,
restarted, SERVING again, given up). Readiness of a restarted process is the caller's own
health check (``mesh.health.wait_serving`` for a service), run on a helper thread so one slow
start never delays noticing another death.

An operator's changes (``mesh scale``, ``mesh restart``: services/fleet.py) run on their own
thread and hand the supervisor what must happen on its thread (starting a process) through
:meth:`Supervisor.on_main`; an instance they stop on purpose is first taken out of
supervision with :meth:`Supervisor.unwatch`, so its exit is not mistaken for a crash.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from mesh.resilience.backoff import Backoff
from mesh.resilience.clock import Clock

TICK_SECONDS = 0.2
"""How often the loop looks for exited processes (Popen.poll: no SIGCHLD handler to race with)."""


def _crash_loop_backoff() -> Backoff:
    # Used through ceiling(): no jitter, one supervisor restarting one process has no herd to spread.
    return Backoff(initial=1.0, multiplier=2.0, maximum=30.0)


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart a dead instance, and when to stop trying."""

    backoff: Backoff = field(default_factory=_crash_loop_backoff)
    """Delay before restart n (n = 0 first) is ``backoff.ceiling(n)``: 1, 2, 4, 8, 16, 30, 30 … s."""
    stable_after: float = 60.0
    """An instance up this long is healthy again: its backoff and crash count start over."""
    crash_limit: int = 6
    """This many exits within ``crash_window`` (without a stable run between) are a crash loop."""
    crash_window: float = 180.0

    def __post_init__(self) -> None:
        if self.stable_after <= 0:
            raise ValueError(f"stable_after must be > 0, got {self.stable_after}")
        if self.crash_limit < 1:
            raise ValueError(f"crash_limit must be >= 1, got {self.crash_limit}")
        if self.crash_window <= 0:
            raise ValueError(f"crash_window must be > 0, got {self.crash_window}")


@dataclass(frozen=True)
class Restart:
    """Start the instance again after ``delay`` seconds; it will be restart number ``restart``."""

    delay: float
    restart: int


@dataclass(frozen=True)
class GiveUp:
    """A crash loop: ``crashes`` exits within ``window`` seconds. Leave the instance stopped."""

    crashes: int
    window: float


class RestartTracker:
    """One instance's restart history under a policy; pure apart from reading ``clock``."""

    def __init__(self, policy: RestartPolicy, clock: Clock = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self._started_at = clock()
        self._streak = 0  # restarts since the last stable run: the backoff exponent
        self._restarts = 0  # every restart so far, for the printed count
        self._exits: deque[float] = deque()

    def started(self) -> None:
        """The instance (re)started now."""
        self._started_at = self._clock()

    def exited(self) -> Restart | GiveUp:
        """The instance exited now: when to restart it, or that this is a crash loop."""
        now = self._clock()
        if now - self._started_at >= self.policy.stable_after:
            self._streak = 0
            self._exits.clear()
        self._exits.append(now)
        while self._exits[0] < now - self.policy.crash_window:
            self._exits.popleft()
        if len(self._exits) >= self.policy.crash_limit:
            return GiveUp(crashes=len(self._exits), window=self.policy.crash_window)
        delay = self.policy.backoff.ceiling(self._streak)
        self._streak += 1
        self._restarts += 1
        return Restart(delay=delay, restart=self._restarts)


def describe_exit(returncode: int) -> str:
    """``Popen.returncode`` in words: "exit code 1", "killed by SIGKILL"."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class Slot(Protocol):
    """What the supervisor needs of a launcher child: a name, its port, its current process."""

    name: str
    port: int
    process: subprocess.Popen[bytes]


Spawn = Callable[[], "subprocess.Popen[bytes]"]
Ready = Callable[["subprocess.Popen[bytes]"], None]
"""Blocks until the process serves; raises if it does not (run on a helper thread)."""


T = TypeVar("T")


class _MainCall(Generic[T]):
    """Work handed to the supervising thread, and its outcome for the thread that waits."""

    def __init__(self, work: Callable[[], T]) -> None:
        self.work = work
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.work()
        except BaseException as error:  # handed to the waiting thread, which re-raises it
            self.error = error
        finally:
            self.done.set()


@dataclass
class _Watched:
    slot: Slot
    spawn: Spawn
    ready: Ready
    tracker: RestartTracker
    restart_at: float | None = None
    restart: int = 0
    gave_up: bool = False

    @property
    def label(self) -> str:
        return f"  {self.slot.name:<10} 127.0.0.1:{self.slot.port}"


class Supervisor:
    """Watches slots, restarts their processes per the policy; one ``say`` line per event.

    Every process is spawned from the thread that calls ``run`` (the launcher's main thread):
    Linux's PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, so spawning
    from a helper thread would have the child killed as soon as that thread finished.
    """

    def __init__(
        self,
        policy: RestartPolicy | None = None,
        say: Callable[[str], None] = print,
        clock: Clock = time.monotonic,
    ) -> None:
        self.policy = policy or RestartPolicy()
        self._say = say
        self._clock = clock
        self._watched: list[_Watched] = []
        self._events: queue.Queue[tuple[_Watched, subprocess.Popen[bytes], str | None]] = queue.Queue()
        self._calls: queue.Queue[_MainCall[Any]] = queue.Queue()
        self._main = threading.get_ident()

    def watch(self, slot: Slot, spawn: Spawn, ready: Ready) -> None:
        """Supervise ``slot`` from now on (its current process is taken as just started)."""
        self._watched.append(_Watched(slot, spawn, ready, RestartTracker(self.policy, self._clock)))

    def unwatch(self, slot: Slot) -> None:
        """Stop supervising ``slot``: it is about to be stopped on purpose (or already was)."""
        self._watched = [w for w in self._watched if w.slot is not slot]

    def watching(self, slot: Slot) -> bool:
        return any(w.slot is slot for w in self._watched)

    def on_main(self, work: Callable[[], T], timeout: float = 60.0) -> T:
        """Run ``work`` on the supervising thread and return its result (or raise its error).

        Processes must be started there: Linux's PR_SET_PDEATHSIG kills a child when the
        *thread* that forked it ends, and only the supervising thread lives as long as the
        launcher. Called on that thread itself, ``work`` simply runs.
        """
        if threading.get_ident() == self._main:
            return work()
        call = _MainCall(work)
        self._calls.put(call)
        if not call.done.wait(timeout):
            raise TimeoutError(f"the supervisor did not run {work!r} within {timeout:g} s")
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]  # set whenever error is None

    def given_up(self) -> list[str]:
        """Names of the instances given up on, in watch order."""
        return [w.slot.name for w in self._watched if w.gave_up]

    def run(self, until: Callable[[], bool] = lambda: False, timeout: float | None = None) -> None:
        """Supervise until ``until()`` holds, ``timeout`` passes, or every slot was given up on.

        The launcher runs it with neither and leaves it by KeyboardInterrupt (Ctrl-C, SIGTERM).
        """
        self._main = threading.get_ident()  # on_main's work runs here from now on
        deadline = None if timeout is None else self._clock() + timeout
        while not until() and any(not w.gave_up for w in self._watched):
            if deadline is not None and self._clock() >= deadline:
                return
            self.step()
            self._run_calls()
            # Waiting on readiness reports doubles as the tick: "SERVING again" prints at once.
            with contextlib.suppress(queue.Empty):
                self._report(*self._events.get(timeout=TICK_SECONDS))

    def step(self) -> None:
        """Notice exits and start what is due; never blocks on a process."""
        now = self._clock()
        for watched in self._watched:
            if watched.gave_up:
                continue
            if watched.restart_at is None:
                returncode = watched.slot.process.poll()
                if returncode is not None:
                    self._exited(watched, describe_exit(returncode))
            elif now >= watched.restart_at:
                self._start(watched)

    def _run_calls(self) -> None:
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            call.run()

    def _exited(self, watched: _Watched, how: str) -> None:
        decision = watched.tracker.exited()
        pid = f"pid {watched.slot.process.pid}"
        if isinstance(decision, Restart):
            watched.restart_at = self._clock() + decision.delay
            watched.restart = decision.restart
            self._say(f"{watched.label}  {pid}  exited ({how}); restarting in {decision.delay:g} s")
            return
        watched.gave_up = True
        self._say(
            f"{watched.label}  {pid}  exited ({how}): crash loop ({decision.crashes} exits within "
            f"{decision.window:g} s), giving up on it"
        )
        name = watched.slot.name
        if all(w.gave_up for w in self._watched if w.slot.name == name):
            self._say(f"  no {name} instance left: the rest of the shop keeps serving")

    def _start(self, watched: _Watched) -> None:
        watched.restart_at = None
        watched.tracker.started()
        try:
            process = watched.spawn()
        except (OSError, RuntimeError) as error:  # could not even start: counts as an exit
            self._exited(watched, f"could not start: {error}")
            return
        watched.slot.process = process
        self._say(f"{watched.label}  pid {process.pid}  restarted (restart {watched.restart})")
        threading.Thread(target=self._await_ready, args=(watched, process), daemon=True).start()

    def _await_ready(self, watched: _Watched, process: subprocess.Popen[bytes]) -> None:
        try:
            watched.ready(process)
        except Exception as error:  # reported on the supervising thread, which decides
            self._events.put((watched, process, str(error) or type(error).__name__))
        else:
            self._events.put((watched, process, None))

    def _report(self, watched: _Watched, process: subprocess.Popen[bytes], error: str | None) -> None:
        if watched.slot.process is not process or process.poll() is not None:
            return  # it already died: its exit line says so and the policy decides
        if error is None:
            self._say(f"{watched.label}  pid {process.pid}  SERVING again")
            return
        self._say(f"{watched.label}  pid {process.pid}  not serving ({error}); killing it")
        process.kill()  # its exit is noticed on the next step and counted like any other
