"""Prometheus on the lab's monitoring host scrapes what the inventory and the catalog name.

Targets are never listed by hand: every vLLM replica of the lab catalog, the
gateway and node_exporter on every host must be up in /api/v1/targets, and
their metrics queryable.
"""

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import lab_inventory
import pytest
import testinfra
import yaml

testinfra_hosts = lab_inventory.hosts("monitoring")

REPO = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))
CACHE = Path(os.environ.get("CITADEL_CACHE", REPO / ".cache"))
ALL_HOSTS = lab_inventory.names("all")
GATEWAYS = lab_inventory.names("llm_gateway")
GATEWAY_PORT = int(lab_inventory.hostvars(GATEWAYS[0]).get("citadel_gateway_port", 8000))
REPLICAS = lab_inventory.served_models()
# The first scrape happens within one interval (15 s); vLLM may still be loading after a converge.
TARGETS_TIMEOUT = 240


def api(host, path: str) -> dict:
    """Prometheus's HTTP API, called inside the monitoring host."""
    script = "import sys,urllib.request as u;print(u.urlopen('http://127.0.0.1:9090'+sys.argv[1],timeout=30).read().decode())"
    cmd = host.run("python3 -c %s %s", script, path)
    assert cmd.rc == 0, cmd.stderr
    body = json.loads(cmd.stdout)
    assert body["status"] == "success", body
    return body["data"]


def query(host, promql: str) -> list[dict]:
    return api(host, "/api/v1/query?query=" + urllib.request.quote(promql))["result"]


def expected_targets() -> set[tuple[str, str, str]]:
    """(job, host, model) of every target the inventory and the catalog imply."""
    out = {("vllm", host, model["name"]) for host, model in REPLICAS}
    out |= {("llm_gateway", host, "") for host in GATEWAYS}
    out |= {("node", host, "") for host in ALL_HOSTS}
    # models at a base_url, at their metrics_url (llama.cpp's, with the model's key)
    out |= {(f"external_{m['name']}", "", m["name"]) for m in lab_inventory.models() if m.get("metrics_url")}
    return out


def scraped_targets(host) -> dict[tuple[str, str, str], dict]:
    active = api(host, "/api/v1/targets?state=active")["activeTargets"]
    return {
        (t["labels"]["job"], t["labels"].get("host", ""), t["labels"].get("model", "")): t
        for t in active
        if t["labels"]["job"] != "prometheus"
    }


def test_prometheus_runs_from_the_package_with_our_config(host):
    svc = host.service("prometheus")
    assert svc.is_enabled
    assert svc.is_running
    props = svc.systemd_properties
    assert props["User"] == "prometheus"
    assert props["ExecReload"]  # config changes reload (SIGHUP), they do not restart
    assert host.run("promtool check config /etc/prometheus/prometheus.yml").rc == 0
    assert host.run("promtool check rules /etc/prometheus/rules/citadel-llm.rules.yml").rc == 0
    args = host.file("/etc/default/prometheus").content_string
    assert "--storage.tsdb.retention.time=" in args
    assert host.socket("tcp://0.0.0.0:9090").is_listening


@pytest.mark.parametrize("name", ALL_HOSTS)
def test_node_exporter_on_every_host(name):
    node = testinfra.get_host(f"podman://{name}")
    svc = node.service("prometheus-node-exporter")
    assert svc.is_enabled
    assert svc.is_running
    assert node.socket("tcp://9100").is_listening


def test_file_sd_lists_every_replica_of_the_catalog(host):
    groups = yaml.safe_load(host.file("/etc/prometheus/file_sd/vllm.yml").content_string)
    listed = sorted((g["labels"]["host"], g["labels"]["model"], g["targets"][0]) for g in groups)
    assert listed == sorted((h, m["name"], lab_inventory.replica(h, m)["endpoint"]) for h, m in REPLICAS)


def test_every_expected_target_is_up(host):
    expected = expected_targets()
    deadline = time.monotonic() + TARGETS_TIMEOUT
    while True:
        scraped = scraped_targets(host)
        down = {key: t["lastError"] or t["health"] for key, t in scraped.items() if t["health"] != "up"}
        if set(scraped) == expected and not down or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert set(scraped) == expected, f"missing: {expected - set(scraped)}; not ours: {set(scraped) - expected}"
    assert not down, f"targets not up after {TARGETS_TIMEOUT} s: {down}"


@pytest.mark.parametrize("name", GATEWAYS)
def test_gateway_metrics_are_scraped_from_their_own_listener_only(host, name):
    """Prometheus scrapes the gateway's metrics listener; the API port does not show /metrics
    (clients may reach it, and the firewall opens the listener to the monitoring hosts only)."""
    url = lab_inventory.gateway_metrics_url(name)
    scraped = scraped_targets(host)[("llm_gateway", name, "")]["scrapeUrl"]
    assert scraped == url, (scraped, url)
    tls = lab_inventory.gateway_tls(name)
    with urllib.request.urlopen(url, timeout=10, context=tls) as resp:
        assert "# TYPE llm_requests_total counter" in resp.read().decode()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{lab_inventory.gateway_url(name)}/metrics", timeout=10, context=tls)
    assert err.value.code == 404
    assert "metrics port" in json.loads(err.value.read())["error"]["message"]


def test_alert_thresholds_follow_the_catalog(host):
    targets = {
        r["metric"]["model"]: float(r["value"][1]) for r in query(host, "citadel:model_latency_p95_target_seconds")
    }
    assert targets == {m["name"]: m["latency_ms"]["p95"] / 1000 for m in lab_inventory.models()}
    groups = {g["name"] for g in api(host, "/api/v1/rules")["groups"]}
    assert {"citadel-llm-gateway", "citadel-llm-vllm", "citadel-llm-hosts"} <= groups


def test_vllm_metrics_are_queryable_per_replica(host):
    deadline = time.monotonic() + 60
    while True:
        series = {(r["metric"]["host"], r["metric"]["model"]) for r in query(host, "vllm:num_requests_running")}
        if series >= {(h, m["name"]) for h, m in REPLICAS} or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert series == {(h, m["name"]) for h, m in REPLICAS}


def test_gateway_requests_show_up(host):
    # One real chat through the gateway, then its counter must be scraped.
    key = (CACHE / "lab-gateway-api-key").read_text().strip()
    chat = next(m for _, m in REPLICAS if "chat" in m["capabilities"])
    body = {"model": chat["name"], "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}
    req = urllib.request.Request(
        f"http://127.0.0.1:{GATEWAY_PORT}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200
    deadline = time.monotonic() + 60
    while not (found := query(host, f'llm_requests_total{{model="{chat["name"]}"}}')) and time.monotonic() < deadline:
        time.sleep(5)
    assert found, "llm_requests_total has no series for the model a chat just went to"
    assert sum(float(r["value"][1]) for r in found) >= 1
