"""The xDS test clients' call log is read while they append to it."""

from __future__ import annotations

from pathlib import Path

from tests.support.xds import XdsClient


def test_a_line_still_being_written_is_left_for_the_next_read(tmp_path: Path) -> None:
    out = tmp_path / "calls.jsonl"
    client = XdsClient("python", "xds:///echo", tmp_path / "bootstrap.json", out)
    out.write_text(
        '{"start": 2.0, "end": 2.5, "label": "b"}\n'
        '{"start": 1.0, "end": 1.5, "label": "a"}\n'
        '{"start": 3.0, "worker": 1, "label": "c", "end'
    )
    assert [call.label for call in client.calls()] == ["a", "b"]

    with out.open("a") as tail:
        tail.write('": 3.5}\n')
    assert [call.label for call in client.calls()] == ["a", "b", "c"]
