"""``python -m gateway``: exit 2 with the reason on bad settings or rules; serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from gateway import __main__ as entry
from tests.unit.gateway.running import running_gateway


def test_bad_settings_exit_2_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "70000")
    assert entry.main() == 2
    assert "GATEWAY_PORT must be within 0..65535, got 70000" in capsys.readouterr().err


def test_an_unusable_rule_setting_exits_2_before_listening(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GATEWAY_PORT", raising=False)
    monkeypatch.setenv("MESH_INSECURE", "1")  # no Consul agent here for a certificate
    monkeypatch.setenv("GATEWAY_PUBLIC_METHODS", "shop.user.v1.UserService.Nope")
    assert entry.main() == 2
    assert "shop.user.v1.UserService.Nope" in capsys.readouterr().err


async def test_run_serves_until_a_stop_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_gateway(tmp_path, monkeypatch, caplog) as gateway:
        assert set(gateway.handlers) == {signal.SIGTERM, signal.SIGINT}
        reader, writer = await asyncio.open_connection(*gateway.address)
        writer.write(b"GET /openapi.json HTTP/1.1\r\nHost: h\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        [length] = [
            line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")
        ]
        body = await reader.readexactly(int(length))
        writer.close()
        assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["openapi"] == "3.1.0"
        assert not gateway.task.done()
        gateway.handlers[signal.SIGTERM]()
        await asyncio.wait_for(gateway.task, 10)
    assert any(r.getMessage() == "gateway stopping" for r in caplog.records)
