"""deploy/grafana/tsunagu.json: importable as is, on any Prometheus datasource, built on the rules.

Every PromQL expression of the dashboard (panel targets and template variables) may name
only series the recording rules define, or metrics docs/metrics.md documents (``up`` and
``ALERTS`` are Prometheus' own): a renamed rule or metric breaks this test, not the
dashboard in front of someone. Panels and their queries use the templated datasource, and
panel ids are unique, as Grafana needs them to be.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from tests.integration.prometheus.conftest import RULES
from tests.support.processes import ROOT

DASHBOARD = ROOT / "deploy" / "grafana" / "tsunagu.json"
TEMPLATED = {"type": "prometheus", "uid": "${datasource}"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
BUILTIN = {"up", "ALERTS", "ALERTS_FOR_STATE"}


def recorded_names() -> set[str]:
    names = set()
    for path in RULES.glob("mesh-*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


def documented_names() -> set[str]:
    """Metric names in docs/metrics.md's tables and lists (backticked)."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    return set(re.findall(r"`((?:grpc|mesh|gateway|shop)_[a-z0-9_]+)[`{]", text))


def metric_names(expr: str) -> set[str]:
    """The metric (series) names a PromQL expression selects; functions, labels and keywords aside."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # strings (regexes, label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("(") or match.group() in KEYWORDS:
            continue  # a function or aggregation, or an operator
        names.add(match.group())
    return names


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    flat = []
    for panel in panels:
        flat.append(panel)
        flat.extend(all_panels(panel.get("panels", [])))
    return flat


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_metric_name_extraction() -> None:
    assert metric_names('sum by (service) (rate(grpc_server_handled_total{grpc_code!="OK"}[1m]))') == {
        "grpc_server_handled_total"
    }
    assert metric_names('a:b:c{service=~"$service"} / on (x) group_left (y) d and e > bool 0.5') == {
        "a:b:c",
        "d",
        "e",
    }


def test_the_dashboard_is_json_grafana_imports() -> None:
    board = dashboard()
    assert board["uid"] == "tsunagu-mesh"
    assert board["title"] and isinstance(board["schemaVersion"], int)
    assert "id" not in board or board["id"] is None  # an id would tie it to one Grafana database
    assert board["panels"]


def test_panel_ids_are_unique_and_panels_do_not_overlap() -> None:
    panels = all_panels(dashboard()["panels"])
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), sorted(ids)
    cells: dict[tuple[int, int], int] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]


def test_every_query_uses_the_templated_datasource() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in all_panels(board["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == TEMPLATED, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == TEMPLATED, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == TEMPLATED


def test_every_expression_names_only_recorded_or_documented_series() -> None:
    board = dashboard()
    allowed = recorded_names() | documented_names() | BUILTIN
    expressions = [
        (panel["title"], target["expr"])
        for panel in all_panels(board["panels"])
        for target in panel.get("targets", ())
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert inner, query
            expressions.append((f"${variable['name']}", inner.group(1)))
    used = set()
    for title, expr in expressions:
        names = metric_names(expr)
        assert names, f"{title}: no series in {expr!r}"
        assert names <= allowed, f"{title}: {sorted(names - allowed)} neither recorded nor documented"
        used |= names
    # The dashboard is on the recording rules: raw metrics would put the cost back on every refresh.
    assert used <= recorded_names() | BUILTIN, sorted(used - recorded_names() - BUILTIN)


def test_recording_rules_read_only_documented_metrics_or_other_rules() -> None:
    prometheus_doc = (ROOT / "docs" / "prometheus.md").read_text()
    documented = documented_names() | set(re.findall(r"`(shop_saga_[a-z0-9_]+)[`{]", prometheus_doc))
    allowed = recorded_names() | documented | {"up"}
    for path in RULES.glob("mesh-*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                names = {re.sub(r"_bucket$", "", name) for name in metric_names(rule["expr"])}
                unknown = names - allowed
                assert not unknown, f"{rule.get('record') or rule.get('alert')}: {sorted(unknown)}"
