"""What one dashboard publishes in Consul, and that ``python -m mesh.dashboard`` is ``mesh dashboard``."""

from __future__ import annotations

import pytest

from mesh.dashboard import __main__ as entry
from mesh.dashboard.registration import dashboard_instance


def test_the_instance_is_stable_across_restarts_and_carries_the_otlp_port() -> None:
    first = dashboard_instance("127.0.0.1", 8081, 40001)
    assert first.id == "dashboard-127.0.0.1-8081" and first.name == "dashboard"
    assert (first.address, first.port) == ("127.0.0.1", 8081)
    assert first.meta == {"otlp_port": "40001"}
    assert dashboard_instance("127.0.0.1", 8081, 40002).id == first.id  # a new OTLP port, same instance


def test_the_module_entry_point_is_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        entry.main(["--help"])
    assert exit_.value.code == 0
    assert "--otlp-port" in capsys.readouterr().out
