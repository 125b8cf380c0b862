"""The model catalog is normalised once (roles/citadel_catalog): defaults, every check, and one
endpoint per replica that every consumer uses — what vLLM binds, the gateway dials, Prometheus
scrapes and the load tests call — even on hosts managed on another address than they serve on."""

import json
import re
import sys

import pytest
import yaml
from conftest import REPO, REVISION

sys.path.insert(0, str(REPO / "roles/citadel_catalog/filter_plugins"))
sys.path.insert(0, str(REPO / "loadtests"))

import catalog  # noqa: E402  (loadtests/catalog.py)
from ansible.errors import AnsibleFilterError  # noqa: E402
from citadel_catalog import citadel_catalog  # noqa: E402

MULTIHOMED = REPO / "tests/inventory/multihomed.yml"


def _model(name, port, group="llm", **fields):
    return {"name": name, "source": {"hf_repo": f"ex/{name}", "revision": REVISION}, "group": group, "port": port,
            "capabilities": ["chat"], "tier": "lightweight", "latency_ms": {"avg": 1, "p95": 2}, **fields}  # fmt: skip


GROUPS = {"all": ["a", "b"], "ungrouped": [], "llm": ["a", "b"], "solo": ["b"], "empty": []}
HOSTVARS = {"a": {"citadel_address": "10.0.0.1", "ansible_host": "192.0.2.1"}, "b": {"ansible_host": "fd00::2"}}


def test_defaults_and_one_endpoint_per_replica():
    chat, embed = citadel_catalog([_model("chat", 11400), _model("embed", 11401, group="solo")], GROUPS, HOSTVARS)
    assert (chat["aliases"], chat["engine"], chat["resources"], chat["env"]) == ([], {}, {}, {})
    assert chat["gateway"] == {"fallbacks": []}
    # citadel_address first, else ansible_host (an IPv6 literal in brackets in the endpoint)
    assert chat["replicas"] == [
        {"host": "a", "address": "10.0.0.1", "port": 11400, "endpoint": "10.0.0.1:11400"},
        {"host": "b", "address": "fd00::2", "port": 11400, "endpoint": "[fd00::2]:11400"},
    ]
    assert [r["host"] for r in embed["replicas"]] == ["b"]


def test_every_mistake_is_named_at_once_with_its_fix():
    models = [
        _model("chat", 11400, gatway={}),  # a typo
        _model("code", 11400, aliases=["chat"]),  # same host and port as chat; alias taken
        _model("lost", 11402, group="nowhere"),
        _model("idle", 11403, group="empty"),
        _model("slow", 11404, latency_ms={"avg": 100}, gateway={"fallbacks": ["slow"]}),
        _model("leaky", 11405, env={"OK_NAME": "1", "X": "a\nVLLM_API_KEY=stolen"}),
        _model("pinned", 11406, source={"path": "/m", "sha256sum": "ab"}, resources={"memory": "8G"}),
        {"name": "bare"},
    ]
    with pytest.raises(AnsibleFilterError) as raised:
        citadel_catalog(models, GROUPS, HOSTVARS)
    text = str(raised.value)
    for fragment in (
        "model chat: unknown fields gatway",
        "names or aliases more than once: chat",
        "models chat and code both use port 11400 on a",
        "model lost: group nowhere is not a group of this inventory (llm, solo, empty)",
        "model idle: its group empty has no hosts",
        "model slow: latency_ms {'avg': 100} needs avg and p95",
        "model leaky: env X: names are letters",
        "model pinned: source: unknown keys sha256sum; the keys are hf_repo, revision, path, sha256sums.",
        "model pinned: resources: unknown keys memory; the keys are memory_max, cpu_quota, gpus",
        "citadel_models entry bare lacks a field: source, group, port, capabilities, tier, latency_ms",
    ):
        assert fragment in text, text


def test_gateway_settings_are_checked_even_when_another_field_is_wrong():
    models = [_model("chat", 11400, tier="huge", gateway={"fallbacks": ["nope"], "timeout_s": -1})]
    text = str(pytest.raises(AnsibleFilterError, citadel_catalog, models, GROUPS, HOSTVARS).value)
    assert "tier 'huge' not known" in text
    assert "model chat: gateway:" in text
    assert "every one but fallbacks, routing and cache (true or false) is a number >= 0" in text


MULTIHOMED_CATALOG = json.dumps(
    {"citadel_models": [_model("chat-a", 11400, group="llm_servers"),
                        _model("embed-b", 11401, group="embedding_servers", capabilities=["embedding"])]}
)  # fmt: skip


def test_gateway_prometheus_units_firewall_and_load_tests_share_each_replicas_endpoint(ansible, tmp_path):
    filters = ":".join(str(p) for p in sorted(REPO.glob("roles/*/filter_plugins")))
    done = ansible(
        "ansible-playbook", "-i", str(MULTIHOMED), "tests/playbooks/render_endpoints.yml", "-e", f"out={tmp_path}",
        "-e", MULTIHOMED_CATALOG, env={"ANSIBLE_FILTER_PLUGINS": filters},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    inventory = yaml.safe_load(MULTIHOMED.read_text())["all"]
    serving = {}  # host -> its serving address, straight from the inventory file
    for group in ("llm_servers", "llm_gateway", "monitoring"):
        for host, hv in inventory["children"][group]["hosts"].items():
            serving[host] = hv["citadel_address"]
    expected = {("chat-a", f"{serving['llm-a']}:11400"), ("chat-a", f"{serving['llm-b']}:11400"),
                ("embed-b", f"{serving['llm-b']}:11401")}  # fmt: skip

    gateway = yaml.safe_load((tmp_path / "gateway-config.yml").read_text())
    dialled = {(m["name"], url.removeprefix("http://")) for m in gateway["models"] for url in m["replicas"]}
    file_sd = json.loads((tmp_path / "file_sd.json").read_text())
    scraped = {(g["labels"]["model"], g["targets"][0]) for g in file_sd["vllm"]}
    bound = set()
    for unit in tmp_path.glob("*.service"):
        text = unit.read_text()
        model = re.search(r"--served-model-name (\S+)", text).group(1)
        bound.add((model, f"{re.search(r'--host (\S+)', text).group(1)}:{re.search(r'--port (\d+)', text).group(1)}"))
    loaded = {
        (m.name, u.removeprefix("http://")) for m in catalog.load(MULTIHOMED, MULTIHOMED_CATALOG) for u in m.replicas
    }
    opened = set()  # each model rule of the firewall: the destination it lets the gateway reach
    for rules in tmp_path.glob("*-firewall.nft"):
        for model, daddr, saddr, port in re.findall(
            r"# model (\S+)\n\s+ip daddr (\S+) ip saddr \{ ([^}]*) \} tcp dport (\d+) accept", rules.read_text()
        ):
            assert serving["gw"] in saddr.split(", "), saddr  # the gateway is let in from its serving address
            opened.add((model, f"{daddr}:{port}"))
    assert dialled == scraped == bound == loaded == opened == expected
    # the other hosts are scraped at their serving address too; the management one is used by nothing
    assert {g["targets"][0] for g in file_sd["node"]} == {f"{a}:9100" for a in serving.values()}
    rendered = " ".join(p.read_text() for p in tmp_path.iterdir())
    assert "192.0.2." not in rendered


def test_a_wrong_catalog_stops_the_load_tests_with_the_same_message(tmp_path):
    bad = {"citadel_models": [_model("chat", 11400, group="llm_servers", tier="huge")]}
    with pytest.raises(RuntimeError, match="model chat: capabilities .* tier 'huge' not known"):
        catalog.load(MULTIHOMED, json.dumps(bad))


def _external(name, **fields):
    return {"name": name, "base_url": "https://api.example.com/openai/v1/", "capabilities": ["chat"],
            "tier": "lightweight", "latency_ms": {"avg": 1, "p95": 2}, **fields}  # fmt: skip


def test_a_model_at_a_base_url_is_installed_nowhere():
    chat, ext = citadel_catalog([_model("chat", 11400), _external("ext", gateway={"fallbacks": ["chat"]})],
                                GROUPS, HOSTVARS)  # fmt: skip
    assert (chat["kind"], ext["kind"]) == ("vllm", "external")
    # no replica on any host: no unit, no firewall rule, no vllm scrape target
    assert (ext["replicas"], ext["group"], ext["port"], ext["engine"]) == ([], None, None, {})
    assert ext["base_url"] == "https://api.example.com/openai/v1"
    assert (ext["probe"], ext["api_key_header"], ext["metrics_url"]) == ("models", "Authorization", None)
    assert ext["gateway"] == {"fallbacks": ["chat"]}


def test_a_base_url_entry_with_mistakes_is_refused_with_the_fix():
    models = [
        _external("shaped", port=11400, group="llm"),  # a replica's fields on an external entry
        _external("nowhere", base_url="ollama-01:11434"),
        _external("scraped", metrics_url="http://user:pw@ollama-01:9090/metrics"),
        _external("probed", probe="ping", api_key_header="Bad Header"),
        _external("retried", gateway={"retry_attempts": 0}),
        {"name": "bare", "base_url": "http://x:1/v1"},
    ]
    with pytest.raises(AnsibleFilterError) as raised:
        citadel_catalog(models, GROUPS, HOSTVARS)
    text = str(raised.value)
    for fragment in (
        "model shaped: unknown fields group, port for a model at a base_url",
        "model nowhere: base_url 'ollama-01:11434' must be an http(s)://host[:port][/path] URL",
        "model scraped: metrics_url",
        "model probed: probe 'ping' is not one of models, request, full",
        "model probed: api_key_header 'Bad Header' is not a header name",
        "model retried: gateway.retry_attempts 0 must be a whole number >= 1",
        "citadel_models entry bare lacks a field: capabilities, tier, latency_ms. A model at a base_url needs",
    ):
        assert fragment in text, (fragment, text)


def test_the_gateway_cache_switch_is_a_boolean():
    assert citadel_catalog([_model("chat", 11400, gateway={"cache": True})], GROUPS, HOSTVARS)[0]["gateway"] == {
        "fallbacks": [],
        "cache": True,
    }
    with pytest.raises(AnsibleFilterError, match="cache \\(true or false\\)"):
        citadel_catalog([_model("chat", 11400, gateway={"cache": "yes"})], GROUPS, HOSTVARS)


def test_a_routing_policy_is_checked_with_its_fix():
    routed = citadel_catalog(
        [_model("chat", 11400, gateway={"routing": {"policy": "prefix_affinity", "load_factor": 1.5}})],
        GROUPS,
        HOSTVARS,
    )[0]
    assert routed["gateway"]["routing"] == {"policy": "prefix_affinity", "load_factor": 1.5}
    for wrong in (
        {"policy": "cache_aware"},
        {"policy": "prefix_affinity", "prefix_chars": 0},
        {"policy": "prefix_affinity", "load_factor": 0.5},
        {"policy": "prefix_affinity", "balance": 2},
        "prefix_affinity",
    ):
        with pytest.raises(AnsibleFilterError) as raised:
            citadel_catalog([_model("chat", 11400, gateway={"routing": wrong})], GROUPS, HOSTVARS)
        assert "model chat: gateway.routing" in str(raised.value)
        assert "policy is one of least_outstanding, prefix_affinity, load_aware" in str(raised.value)
