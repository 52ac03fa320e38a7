"""docs/metrics.md is the contract for metric names and labels: the code must match it exactly.

Every family a service process registers (``grpc_*`` from mesh/metrics/families.py, ``mesh_*``
from mesh/metrics/resilience.py) is compared, name and label names, with the tables of the
document, both ways: an undocumented metric fails, and so does a documented one that is gone.
"""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from mesh.metrics.families import rpc_families
from mesh.metrics.resilience import ResilienceCollector

DOC = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(?P<name>(grpc|mesh)_[a-z_]+)` \| (?P<type>\w+) \|(?P<labels>[^|]*)\|")


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    """``name -> (type, label names)`` from the doc's tables (``mesh_*`` rows list extra labels)."""
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match is None:
            continue
        names = re.sub(r"\([^)]*\)", "", match["labels"])  # `scope` (`service`/`endpoint`): values
        labels = set(re.findall(r"`([a-z_]+)`", names))
        if match["name"].startswith("mesh_"):
            labels.add("target_service")
        found[match["name"]] = (match["type"], frozenset(labels))
    return found


def exposed_name(name: str, kind: str) -> str:
    return f"{name}_total" if kind == "counter" else name


def registered() -> dict[str, tuple[str, frozenset[str]]]:
    registry = CollectorRegistry()
    found: dict[str, tuple[str, frozenset[str]]] = {}
    for side in ("server", "client"):
        for family in rpc_families(registry, side).describe():
            found[exposed_name(family.name, family.type)] = (family.type, frozenset(family._labelnames))  # type: ignore[attr-defined]
    for family in ResilienceCollector().describe():
        found[exposed_name(family.name, family.type)] = (family.type, frozenset(family._labelnames))  # type: ignore[attr-defined]
    return found


def test_every_metric_is_documented_with_its_labels_and_nothing_else_is() -> None:
    assert registered() == documented()
