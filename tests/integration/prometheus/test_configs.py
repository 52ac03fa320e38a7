"""The shipped Prometheus configurations and rules, checked by Debian's promtool (2.42).

- ``promtool check config`` on prometheus.yml (http_sd; it checks the rule files it loads too);
- prometheus-consul-sd.yml: this promtool is built without Consul discovery and refuses the
  ``consul_sd_configs`` block (``field consul_sd_configs not found``). So the rest of the file
  is checked by promtool with that block swapped for a static target (the relabel rules are
  compiled and checked by the real parser), the block's keys are checked against the fields
  Prometheus documents for consul_sd_configs, and its relabeling is run (below, in Python,
  Prometheus' replace/keep semantics) over the ``__meta_consul_*`` labels of the http_sd
  document: both configurations must give every target the same address and labels;
- ``promtool check rules`` and ``promtool test rules`` (deploy/prometheus/rules/tests.yml:
  each alert fires on its condition, the edge rules attribute calls to their service).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mesh.observe.http_sd import consul_meta_labels, sd_document
from tests.integration.prometheus.conftest import DEPLOY, RULES, PrometheusTools, promtool
from tests.unit.mesh.observe.test_http_sd import row

HTTP_SD_CONFIG = DEPLOY / "prometheus.yml"
CONSUL_SD_CONFIG = DEPLOY / "prometheus-consul-sd.yml"
RULE_FILES = (RULES / "mesh-recording.yml", RULES / "mesh-alerts.yml")

# consul_sd_configs' fields in Prometheus 2.42's documentation, HTTP client settings included.
CONSUL_SD_FIELDS = {
    "server", "path_prefix", "token", "datacenter", "namespace", "partition", "scheme",
    "username", "password", "services", "tags", "node_meta", "tag_separator", "allow_stale",
    "refresh_interval", "basic_auth", "authorization", "oauth2", "proxy_url", "no_proxy",
    "proxy_from_environment", "proxy_connect_header", "follow_redirects", "enable_http2",
    "tls_config",
}  # fmt: skip


def test_http_sd_config_and_its_rule_files_pass_promtool(tools: PrometheusTools) -> None:
    checked = promtool(tools, "check", "config", HTTP_SD_CONFIG)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for rule_file in RULE_FILES:  # loaded by the config, so checked above too; named here
        assert f"{rule_file.name}" in checked.stdout + checked.stderr


def test_rule_files_pass_promtool_check_rules(tools: PrometheusTools) -> None:
    checked = promtool(tools, "check", "rules", *RULE_FILES)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_every_alert_fires_on_its_condition_in_promtool_test_rules(tools: PrometheusTools) -> None:
    tested = promtool(tools, "test", "rules", RULES / "tests.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr

    tests = yaml.safe_load((RULES / "tests.yml").read_text())["tests"]
    tested_alerts = {case["alertname"] for test in tests for case in test.get("alert_rule_test", ())}
    firing = {
        case["alertname"] for test in tests for case in test.get("alert_rule_test", ()) if case["exp_alerts"]
    }
    assert tested_alerts == firing == alert_names()


def alert_names() -> set[str]:
    groups = yaml.safe_load((RULES / "mesh-alerts.yml").read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"]}


def test_consul_sd_config_passes_promtool_or_only_for_the_missing_consul_discovery(
    tools: PrometheusTools, tmp_path: Path
) -> None:
    checked = promtool(tools, "check", "config", CONSUL_SD_CONFIG)
    if checked.returncode != 0:
        # Debian's build: the one thing it may refuse is the compiled-out discovery itself.
        assert "field consul_sd_configs not found" in checked.stdout + checked.stderr, (
            checked.stdout + checked.stderr
        )
    config = yaml.safe_load(CONSUL_SD_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    for block in job["consul_sd_configs"]:
        assert set(block) <= CONSUL_SD_FIELDS, set(block) - CONSUL_SD_FIELDS
        assert re.fullmatch(r"[\w.-]+:\d+", block["server"])

    # Everything else, relabel rules included, through the real parser.
    job.pop("consul_sd_configs")
    job["static_configs"] = [{"targets": ["127.0.0.1:9"]}]
    config["rule_files"] = [str(path) for path in RULE_FILES]
    swapped = tmp_path / "consul-sd-without-consul.yml"
    swapped.write_text(yaml.safe_dump(config))
    checked = promtool(tools, "check", "config", swapped)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def expand(replacement: str, match: re.Match[str]) -> str:
    """Go's regexp Expand as relabeling uses it: ``$1``, ``${1}``, ``$name``."""
    return re.sub(
        r"\$\{?(\w+)\}?",
        lambda m: (match.group(int(m[1])) if m[1].isdigit() else match.group(m[1])) or "",
        replacement,
    )


def relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus' relabeling for the actions the shipped configs use (replace, keep, drop)."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        value = rule.get("separator", ";").join(
            labels.get(name, "") for name in rule.get("source_labels", ())
        )
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if (action == "keep" and match is None) or (action == "drop" and match is not None):
            return None
        if action == "replace" and match is not None:
            result = expand(rule.get("replacement", "$1"), match)
            if result:
                labels[rule["target_label"]] = result
            else:
                labels.pop(rule["target_label"], None)
        assert action in ("replace", "keep", "drop"), f"relabel action {action} not simulated here"
    return labels


def scraped(address: str, labels: dict[str, str]) -> tuple[str, dict[str, str]]:
    """What Prometheus keeps of a target: its address, and its labels without ``__`` ones plus instance."""
    kept = {k: v for k, v in labels.items() if not k.startswith("__")}
    kept.setdefault("instance", address)
    return address, kept


def test_consul_sd_relabeling_gives_targets_what_http_sd_gives_them() -> None:
    rows = [
        row("payment", "payment-127.0.0.1-7001", port=7001, meta={"metrics_port": "9101"}),
        row("user", "user-10.0.0.9-7005", address="", node_address="10.0.0.9", port=7005),
        row("consul", "consul", meta={}),
        row("legacy", "legacy-1", meta={"version": "1"}),
    ]
    rules = yaml.safe_load(CONSUL_SD_CONFIG.read_text())["scrape_configs"][0]["relabel_configs"]

    from_http_sd = sorted(scraped(g["targets"][0], g["labels"]) for g in sd_document(rows))
    from_consul_sd = []
    for raw in rows:
        service, node = raw["Service"], raw["Node"]
        # What consul_sd hands to relabeling: the service's address and port, and its meta labels.
        labels = consul_meta_labels(raw)
        labels["__address__"] = f"{service['Address'] or node['Address']}:{service['Port']}"
        result = relabel(labels, rules)
        if result is not None:
            from_consul_sd.append(scraped(result["__address__"], result))

    assert sorted(from_consul_sd) == from_http_sd
    assert sorted(address for address, _ in from_http_sd) == ["10.0.0.9:9101", "127.0.0.1:9101"]


def test_the_configs_scrape_the_same_job_with_the_same_rules() -> None:
    http_sd = yaml.safe_load(HTTP_SD_CONFIG.read_text())
    consul_sd = yaml.safe_load(CONSUL_SD_CONFIG.read_text())
    assert http_sd["rule_files"] == consul_sd["rule_files"] == [f"rules/{p.name}" for p in RULE_FILES]
    assert http_sd["global"] == consul_sd["global"]
    assert [j["job_name"] for j in http_sd["scrape_configs"]] == [
        j["job_name"] for j in consul_sd["scrape_configs"]
    ]
    (sd,) = http_sd["scrape_configs"][0]["http_sd_configs"]
    assert sd["url"].endswith("/sd")
