"""Prometheus' own binaries for the tests here: Debian's ``prometheus`` and ``promtool`` 2.42.

Found on PATH, else installed by tools/ensure-prometheus.sh (Debian's package, as root or
through ``sudo -n``, without starting its system service). A machine where neither works
fails these tests with the script's reason: they are about the real Prometheus, and a
skipped test would hide that nothing was checked.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import ROOT

DEPLOY = ROOT / "deploy" / "prometheus"
RULES = DEPLOY / "rules"


@dataclass(frozen=True)
class PrometheusTools:
    prometheus: str
    promtool: str


def find_tools() -> PrometheusTools:
    """The two binaries, installing Debian's package first when either is missing."""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if not all(found):
        script = ROOT / "tools" / "ensure-prometheus.sh"
        done = subprocess.run([str(script)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(f"{script.name} failed:\n{done.stderr}")
        found = shutil.which("prometheus"), shutil.which("promtool")
    prometheus, promtool = found
    if prometheus is None or promtool is None:
        pytest.fail("prometheus/promtool still not on PATH after tools/ensure-prometheus.sh")
    return PrometheusTools(prometheus, promtool)


@pytest.fixture(scope="session")
def tools() -> PrometheusTools:
    return find_tools()


def promtool(
    tools: PrometheusTools, *args: str | Path, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``promtool <args>``, its output kept for the assertion message."""
    return subprocess.run(
        [tools.promtool, *map(str, args)], capture_output=True, text=True, check=False, cwd=cwd, timeout=60
    )
