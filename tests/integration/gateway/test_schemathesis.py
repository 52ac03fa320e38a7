"""schemathesis against /openapi.json: every check, a bounded number of examples, no failure.

Positive-data acceptance is told that 400 is an acceptable answer to schema-valid data: the
descriptors carry no business rules (a password's length, a known sku), so the document
cannot promise them; everything else runs with schemathesis' defaults. A fixed seed keeps
CI deterministic; ``GATEWAY_SCHEMATHESIS_SEED`` explores others.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

from tests.integration.gateway.conftest import GatewayProcess, register

CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]
"""


def test_schemathesis_all_checks(gateway: GatewayProcess, tmp_path: Path) -> None:
    _, token = register(gateway, f"st-{uuid.uuid4().hex[:8]}@example.com")
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"http://127.0.0.1:{gateway.port}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        os.environ.get("GATEWAY_SCHEMATHESIS_EXAMPLES", "10"),
        "--seed",
        os.environ.get("GATEWAY_SCHEMATHESIS_SEED", "20261128"),
        "--request-timeout",
        "20",
        "-H",
        f"Authorization: Bearer {token}",
        "--no-color",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=540, cwd=tmp_path, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-8000:]
    summary = output.split("SUMMARY")[-1]
    assert "Failures:" not in summary and "Errors:" not in summary, output[-6000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert counts is not None and int(counts.group(1)) > 500, summary
    assert "Server error" not in output and "Response violates schema" not in output
