"""The Grafana dashboard and the alert rules only query metrics that exist.

Known names come from monitoring/fixtures/: /metrics captured from the lab's
real vLLM 0.32 servers (chat and embeddings), node_exporter 1.5 and the
gateway (files/gateway 0.1.0); the fields monitoring/dcgm/counters.csv tells
the DCGM exporter to export (no GPU here to capture it from); plus the recording
rules' own names and Prometheus's `up`/`ALERTS`. A renamed metric upstream, or a
typo here, fails.
"""

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_monitoring_rules import ENVS, rendered

FIXTURES = REPO / "monitoring/fixtures"
DASHBOARDS = sorted((REPO / "monitoring/grafana/dashboards").glob("*.json"))
BUILTIN = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}
# PromQL words that look like metric names.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS |= {"inf", "nan", "Inf", "NaN"}


def exported_names(path: Path) -> set[str]:
    """Metric names of one exposition-format capture: samples, and families declared by TYPE
    (a labelled counter has no sample until first used)."""
    names = set()
    suffixes = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}
    for line in path.read_text().splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split()
            names |= {family + suffix for suffix in suffixes.get(kind, ("",))}
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (without a parser: strip what is not a name)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    expr = re.sub(r"\$\w+", " ", expr)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.:])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        rest = expr[m.end() :].lstrip()
        if rest.startswith("("):  # function or aggregation
            continue
        if m.group(0) not in KEYWORDS:
            names.add(m.group(0))
    return names


def dcgm_fields() -> set[str]:
    """The DCGM exporter's metrics: the fields its counters file names (first CSV column)."""
    lines = (REPO / "monitoring/dcgm/counters.csv").read_text().splitlines()
    return {line.split(",")[0].strip() for line in lines if line.strip() and not line.startswith("#")}


def known_names(rule_groups: list[dict]) -> set[str]:
    names = set(BUILTIN) | dcgm_fields()
    for fixture in FIXTURES.glob("*.prom"):
        names |= exported_names(fixture)
    for group in rule_groups:
        names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


def _rules(env: str) -> list[dict]:
    return yaml.safe_load((rendered(env) / "prometheus/rules/citadel-llm.rules.yml").read_text())["groups"]


def _dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query or "")
        if match:
            out.append((f"variable {var['name']}", match.group(1)))
    return out


def test_fixtures_are_real_captures():
    chat = exported_names(FIXTURES / "vllm-0.32.0-smollm2-135m.prom")
    embed = exported_names(FIXTURES / "vllm-0.32.0-all-minilm-l6-v2.prom")
    node = exported_names(FIXTURES / "node-exporter-1.5.0.prom")
    assert {"vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds_bucket"} <= chat
    assert "vllm:num_requests_waiting" in embed
    assert {"node_cpu_seconds_total", "node_memory_MemAvailable_bytes", "node_filesystem_avail_bytes"} <= node
    gateway = exported_names(FIXTURES / "gateway-0.1.0.prom")
    assert {"llm_requests_total", "llm_request_duration_seconds_bucket", "llm_retries_total"} <= gateway


def test_the_checker_catches_unknown_names():
    known = known_names([])
    assert metric_names('sum by (model) (rate(vllm:num_request_running{model=~"$model"}[5m]))') == {
        "vllm:num_request_running"
    }
    assert "vllm:num_request_running" not in known
    assert metric_names("1 - a_b / c_d > 0.8 and on (x) e unless f offset 5m") == {"a_b", "c_d", "e", "f"}
    assert metric_names('histogram_quantile(0.95, sum by (le) (rate(x_bucket{le="1e9"}[$__rate_interval])))') == {
        "x_bucket"
    }


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_valid_and_provisionable(dashboard):
    board = json.loads(dashboard.read_text())
    assert board["uid"] == "citadel-llm"
    assert board["schemaVersion"] >= 36
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [p for p in board["panels"] if p["type"] != "row"]
    assert len(graphs) >= 10
    for panel in graphs:
        # The datasource the role provisions (fixed uid), never a per-install one.
        assert panel["datasource"] == {"type": "prometheus", "uid": "citadel-prometheus"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
    titles = " ".join(p["title"] for p in graphs).lower()
    topics = ("requests per second", "p50", "p95", "first token", "error", "health", "waiting", "kv-cache")
    for topic in (*topics, "tokens per second", "cpu", "memory"):
        assert topic in titles, topic


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_queries_only_exported_metrics(dashboard):
    known = known_names(_rules("lab"))
    board = json.loads(dashboard.read_text())
    unknown = {
        (title, name) for title, expr in _dashboard_exprs(board) for name in metric_names(expr) if name not in known
    }
    assert not unknown, f"metrics not exported by the gateway, vLLM or node_exporter: {sorted(unknown)}"


@pytest.mark.parametrize("env", ENVS)
def test_rules_query_only_exported_metrics(env):
    groups = _rules(env)
    known = known_names(groups)
    unknown = {
        (rule.get("alert") or rule["record"], name)
        for group in groups
        for rule in group["rules"]
        for name in metric_names(rule["expr"])
        if name not in known
    }
    assert not unknown, f"metrics not exported by the gateway, vLLM or node_exporter: {sorted(unknown)}"
