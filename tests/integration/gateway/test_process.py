"""`python -m gateway` as a process: refuses a bad configuration, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.integration.gateway.conftest import Shop, start_gateway
from tests.support.processes import ROOT


def run_gateway(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("MESH_", "GATEWAY_"))}
    full.update(env, PYTHONPATH=str(ROOT), GATEWAY_PORT="0")
    return subprocess.run(
        [sys.executable, "-m", "gateway"],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_configuration_fails_the_start(shop: Shop) -> None:
    env = shop.gateway_env()
    unknown = run_gateway({**env, "GATEWAY_PUBLIC_METHODS": "shop.user.v1.UserService.Nope"})
    assert unknown.returncode == 2 and "Nope" in unknown.stderr
    typo = run_gateway({**env, "GATEWAY_MAX_BODY_BYTES": "lots"})
    assert typo.returncode == 2 and "GATEWAY_MAX_BODY_BYTES" in typo.stderr
    no_key = run_gateway({k: v for k, v in env.items() if k != "MESH_JWT_PUBLIC_KEY_FILE"})
    assert no_key.returncode == 2 and "public key" in no_key.stderr


def test_sigterm_stops_the_gateway_cleanly(shop: Shop, tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, shop.gateway_env())
    assert gateway.request("GET", "/v1/products")[0] == 200
    assert gateway.stop() == 0
    assert '"gateway stopping"' in gateway.logs()
