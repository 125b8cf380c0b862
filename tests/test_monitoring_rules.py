"""Prometheus files rendered by the prometheus role for the lab and production.

The role runs in its export mode (prometheus_export_dir) on the controller,
through monitoring/tests/render.yml: the same templates, filters and catalog
as a real run, no host contacted. promtool then checks the configuration and
the rules and runs the unit tests in monitoring/tests/rules-<env>.test.yml.
"""

import atexit
import copy
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, pinned_catalog

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
ENVS = ("lab", "production")
CATALOGS = {
    "lab": REPO / "inventory/lab/group_vars/lab/models.yml",
    "production": REPO / "group_vars/all/models.yml",
}


def _catalog(env: str) -> list[dict]:
    return pinned_catalog(CATALOGS[env])


def render_monitoring(env: str, catalog: list[dict] | None = None, extra: dict | None = None) -> Path:
    """Render the monitoring files of inventory/<env> (optionally another catalog or settings) into a temporary dir."""
    out = Path(tempfile.mkdtemp(prefix=f"citadel-monitoring-{env}-"))
    atexit.register(shutil.rmtree, out, True)
    variables = {"out": str(out), **(extra or {})}
    if catalog is None and env == "production":
        catalog = _catalog(env)  # pinned
    if catalog is not None:
        variables["citadel_models"] = catalog
    (out / "extra-vars.json").write_text(json.dumps(variables))
    run = subprocess.run(
        [
            "ansible-playbook",
            "-i",
            f"inventory/{env}",
            "monitoring/tests/render.yml",
            "-e",
            f"@{out / 'extra-vars.json'}",
        ],
        cwd=REPO,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    return out


@functools.cache
def rendered(env: str) -> Path:
    """Rendered once per test session (also used by test_monitoring_metrics.py)."""
    return render_monitoring(env)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    assert Path(PROMTOOL).exists(), "promtool is missing: scripts/bootstrap.sh installs the prometheus package"
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _unit_test(rules_dir: Path, env: str) -> subprocess.CompletedProcess:
    test_file = rules_dir / f"rules-{env}.test.yml"
    shutil.copy(REPO / f"monitoring/tests/rules-{env}.test.yml", test_file)
    return promtool("test", "rules", test_file.name, cwd=rules_dir)


@pytest.mark.parametrize("env", ENVS)
def test_rendered_config_and_rules_pass_promtool_check(env):
    out = rendered(env) / "prometheus"
    rules = promtool("check", "rules", str(out / "rules/citadel-llm.rules.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout
    config = promtool("check", "config", str(out / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


@pytest.mark.parametrize("env", ENVS)
def test_alert_unit_tests_fire_and_stay_quiet(env):
    run = _unit_test(rendered(env) / "prometheus/rules", env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


@pytest.mark.parametrize(
    ("old", "new", "tool_step"),
    [
        # A metric name typo still parses: only the unit tests catch it.
        ('llm_requests_total{status=~"5.."}', 'llm_request_total{status=~"5.."}', "test"),
        # A syntax error: promtool check rules rejects the file.
        ("vllm:kv_cache_usage_perc >", "vllm:kv_cache_usage_perc >>", "check"),
    ],
)
def test_a_broken_expression_fails_the_checks(tmp_path, old, new, tool_step):
    rules_dir = tmp_path / "rules"
    shutil.copytree(rendered("lab") / "prometheus/rules", rules_dir)
    rules_file = rules_dir / "citadel-llm.rules.yml"
    text = rules_file.read_text()
    assert old in text
    rules_file.write_text(text.replace(old, new))
    if tool_step == "check":
        run = promtool("check", "rules", str(rules_file))
    else:
        assert promtool("check", "rules", str(rules_file)).returncode == 0
        run = _unit_test(rules_dir, "lab")
    assert run.returncode != 0
    assert "FAILED" in run.stdout + run.stderr


def _file_sd(out: Path, job: str) -> list[dict]:
    return yaml.safe_load((out / f"prometheus/file_sd/{job}.yml").read_text())


def _lab_hostvars(var: str) -> dict[str, object]:
    """Each lab host's `var` where inventory/lab/hosts.yml sets it."""
    found = {}
    pending = [yaml.safe_load((REPO / "inventory/lab/hosts.yml").read_text())["all"]]
    while pending:
        group = pending.pop()
        for name, hv in (group.get("hosts") or {}).items():
            if hv and var in hv:
                found[name] = hv[var]
        pending.extend((group.get("children") or {}).values())
    return found


def _lab_ips() -> dict[str, str]:
    """Each lab host's lab_ip (its citadel_address)."""
    return _lab_hostvars("lab_ip")


def test_lab_targets_come_from_inventory_and_catalog():
    out = rendered("lab")
    ip = _lab_ips()
    vllm = [(g["labels"]["model"], g["labels"]["host"], g["targets"]) for g in _file_sd(out, "vllm")]
    assert vllm == [
        ("smollm2-135m", "citadel-llm-01", [f"{ip['citadel-llm-01']}:11403"]),
        ("smollm2-135m", "citadel-llm-02", [f"{ip['citadel-llm-02']}:11403"]),
        ("all-minilm-l6-v2", "citadel-llm-02", [f"{ip['citadel-llm-02']}:11404"]),
    ]
    assert {g["labels"]["tier"] for g in _file_sd(out, "vllm")} == {"lightweight", "embedding"}
    https = {h for h, on in _lab_hostvars("citadel_gateway_tls").items() if on}
    assert https, "no lab gateway serves HTTPS"
    assert _file_sd(out, "llm_gateway") == [
        {"targets": [f"{ip[h]}:8001"], "labels": {"host": h, **({"__scheme__": "https"} if h in https else {})}}
        for h in ("citadel-gateway-01", "citadel-gateway-02")
    ]
    # the https ones are verified against the CA the inventory names, written beside the config
    config = yaml.safe_load((out / "prometheus/prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "llm_gateway"]
    ca = (out / "prometheus" / Path(job["tls_config"]["ca_file"]).name).read_text()
    assert ca.strip() == (Path(os.environ.get("CITADEL_CACHE", REPO / ".cache")) / "lab-tls/ca.pem").read_text().strip()
    nodes = sorted(t for g in _file_sd(out, "node") for t in g["targets"])
    assert nodes == sorted(f"{address}:9100" for address in ip.values())
    assert _file_sd(out, "dcgm") == []  # no lab model lists GPUs


def test_production_targets_use_ansible_host():
    out = rendered("production")
    vllm = {(g["labels"]["model"], g["targets"][0]) for g in _file_sd(out, "vllm")}
    assert ("mixtral-8x7b", "192.168.10.29:11400") in vllm
    assert ("phi-3-mini", "192.168.10.28:11403") in vllm
    assert len(vllm) == len(_catalog("production"))
    assert _file_sd(out, "llm_gateway")[0]["targets"] == ["192.168.10.31:8001"]
    # both LLM hosts serve models on GPUs: their DCGM exporters are scraped
    assert _file_sd(out, "dcgm") == [
        {"targets": ["192.168.10.29:9400"], "labels": {"host": "hx-llm-server-01"}},
        {"targets": ["192.168.10.28:9400"], "labels": {"host": "hx-llm-server-02"}},
    ]
    config = yaml.safe_load((out / "prometheus/prometheus.yml").read_text())
    assert config["global"]["external_labels"] == {"environment": "production"}
    assert "alerting" not in config  # prometheus_alertmanagers: [] by default


def test_a_catalog_change_needs_no_other_edit():
    catalog = copy.deepcopy(_catalog("lab"))
    catalog = [m for m in catalog if m["name"] != "all-minilm-l6-v2"]
    added = {**copy.deepcopy(catalog[0]), "name": "qwen-tiny", "aliases": [], "port": 11405}
    added["latency_ms"] = {"avg": 400, "p95": 1250}
    out = render_monitoring("lab", catalog + [added])
    models = [g["labels"]["model"] for g in _file_sd(out, "vllm")]
    assert "all-minilm-l6-v2" not in models
    assert models.count("qwen-tiny") == 2  # group llm_servers: both lab hosts
    rules = (out / "prometheus/rules/citadel-llm.rules.yml").read_text()
    assert re.search(r"expr: vector\(1\.25\)\n\s+labels:\n\s+model: qwen-tiny", rules)
    assert "all-minilm-l6-v2" not in rules


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"prometheus_storage_retention_time": "15 days"},
            ['prometheus_storage_retention_time="15 days"', "15d, 12w, 1d12h"],
        ),
        ({"prometheus_scrape_timeout": "30s"}, ["prometheus_scrape_timeout (30s) is longer than"]),
        ({"prometheus_alertmanagers": ["http://am:9093"]}, ['"http://am:9093" is not host:port']),
        ({"prometheus_alert_memory_ratio": 80}, ["prometheus_alert_memory_ratio=80 must be a ratio between 0 and 1"]),
        (
            {"citadel_models": [{**_catalog("production")[0], "latency_ms": {"avg": 2000}}]},
            # the role alone (no playbooks/preflight.yml): its catalog dependency's argument spec
            ["missing required arguments: p95 found in citadel_models -> latency_ms"],
        ),
    ],
)
def test_preflight_rejects_bad_monitoring_settings(tmp_path, extra, expected):
    run = subprocess.run(
        ["ansible-playbook", "-i", "inventory/production", "monitoring/tests/render.yml"]
        + ["-e", f"out={tmp_path}", "-e", json.dumps({"citadel_models": _catalog("production")})]
        + ["-e", json.dumps(extra)],
        cwd=REPO,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = " ".join((run.stdout + run.stderr).split())
    assert run.returncode != 0
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in the output:\n{run.stdout[-2000:]}"
    assert not (tmp_path / "prometheus").exists()  # stopped before writing anything


def test_grafana_provisioning_points_at_this_prometheus():
    grafana = rendered("production") / "grafana"
    datasource = yaml.safe_load((grafana / "provisioning/datasources/citadel-llm.yml").read_text())["datasources"][0]
    assert datasource["uid"] == "citadel-prometheus"  # what every dashboard panel references
    assert datasource["url"] == "http://192.168.10.37:9090"  # the monitoring host of the inventory
    provider = yaml.safe_load((grafana / "provisioning/dashboards/citadel-llm.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/citadel-llm"
    shipped = REPO / "monitoring/grafana/dashboards/citadel-llm.json"
    assert (grafana / "dashboards/citadel-llm.json").read_text() == shipped.read_text()


def test_alertmanagers_are_an_option_only():
    out = render_monitoring("production", extra={"prometheus_alertmanagers": ["am.example.org:9093"]})
    config = yaml.safe_load((out / "prometheus/prometheus.yml").read_text())
    assert config["alerting"] == {"alertmanagers": [{"static_configs": [{"targets": ["am.example.org:9093"]}]}]}
    check = promtool("check", "config", str(out / "prometheus/prometheus.yml"))
    assert check.returncode == 0, check.stdout + check.stderr
