"""How the launcher starts a child: tied to the launcher's life, and without fork handlers.

A child started with a ``preexec_fn`` is fork()ed, which runs gRPC's fork handlers in it:
grpcio restarts its poller thread there, subprocess closes that poller's epoll descriptor
before exec, and the child aborts now and then (CI saw an inventory exit with SIGABRT,
"epoll_wait error: Bad file descriptor", before it served). The launcher ties its children
to its life with ``setpriv --pdeathsig`` instead, and CPython vfork()s, which runs no fork
handler at all. The fork handlers are observed here through Python's own
(``os.register_at_fork``), which CPython runs exactly when it fork()s for a ``preexec_fn``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from services.launcher import spawn
from tests.support.processes import ROOT


def test_a_child_is_asked_to_stop_when_the_launcher_dies(tmp_path: Path) -> None:
    child = spawn("tests.support.parent_death_signal", {}, "child", log_dir=tmp_path)
    assert child.wait(30) == 0
    assert (tmp_path / "child.log").read_text().strip() == f"pdeathsig={signal.SIGTERM.value}"


def test_a_child_is_started_without_running_the_launchers_fork_handlers(tmp_path: Path) -> None:
    marker = tmp_path / "fork-handlers-ran"
    launcher = textwrap.dedent(
        f"""
        import os
        from pathlib import Path
        from services.launcher import spawn

        def mark() -> None:
            with open({str(marker)!r}, "a") as ran:
                ran.write("ran\\n")

        os.register_at_fork(after_in_child=mark)
        child = spawn("tests.support.parent_death_signal", {{}}, "child", log_dir=Path({str(tmp_path)!r}))
        print(child.wait(30))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", launcher], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0", done.stdout + done.stderr
    assert not marker.exists(), "the child ran the launcher's fork handlers (it was fork()ed, not vfork()ed)"
