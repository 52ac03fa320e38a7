"""Counting the COMMITs a process's SQLite connections send: how tests see group commit work."""

from __future__ import annotations

import sqlite3

import pytest


def counting_commits(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every COMMIT sent by SQLite connections opened from now on (those already open are not
    traced: open the database under test after calling this)."""
    commits: list[str] = []
    connect = sqlite3.connect

    def traced(*args: object, **kwargs: object) -> sqlite3.Connection:
        connection = connect(*args, **kwargs)  # type: ignore[arg-type]
        connection.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        return connection

    monkeypatch.setattr(sqlite3, "connect", traced)
    return commits
