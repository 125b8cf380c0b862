"""roles/nvidia_gpu and roles/dcgm_exporter on the lab's LLM hosts, which have no NVIDIA GPU and
serve no model on GPUs: the roles say so for each host, change nothing and install nothing (the
GPU path itself needs real GPUs; the roles' READMEs say what ran where)."""

import copy
import json
import re
import subprocess

import lab_inventory
import yaml
from lab_ops import LLM_HOSTS, REPO, playbook, playbook_run

NOTHING_OF_OURS = (
    "/etc/modprobe.d/citadel-nvidia.conf",
    "/etc/modules-load.d/citadel-nvidia.conf",
    "/etc/systemd/system/citadel-nvidia-devices.service",
    "/var/lib/citadel/nvidia-gpu-reboot-due",
    "/etc/dcgm-exporter/citadel-counters.csv",
    "/etc/apt/sources.list.d/nvidia-cuda.sources",
)


def test_the_gpu_roles_report_no_gpu_and_change_nothing_on_the_lab():
    out = playbook("site.yml", "--tags", "nvidia_gpu,dcgm_exporter")
    for name in lab_inventory.names("llm_servers"):
        assert f"{name}: no NVIDIA GPU on the PCI bus; nvidia_gpu leaves this host as it is." in out, out[-3000:]
        assert f"{name}: no catalog model runs on GPUs here; dcgm_exporter leaves this host as it is." in out
        assert re.search(rf"^{re.escape(name)}\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", out, re.M)
    # the role ended before its install: not one task of it ran past the report
    assert "Install the driver" not in out
    assert "Install the exporter" not in out
    assert "Is a driver reboot due here" in out, "the reboot play ran (and found nothing to reboot)"
    for name, on in LLM_HOSTS.items():
        assert not [p for p in NOTHING_OF_OURS if on.file(p).exists], name
        assert not on.package("nvidia-utils-580-server").is_installed
        assert not on.exists("nvidia-smi")
        assert not on.package("datacenter-gpu-manager-exporter").is_installed


def test_a_model_on_gpus_of_a_host_without_any_is_refused_before_anything_changes(tmp_path):
    catalog = yaml.safe_load((REPO / "inventory/lab/group_vars/lab/models.yml").read_text())["citadel_models"]
    catalog = copy.deepcopy(catalog)
    (chat,) = [m for m in catalog if m["name"] == "smollm2-135m"]
    chat.setdefault("resources", {})["gpus"] = "0"
    extra = tmp_path / "catalog.json"
    extra.write_text(json.dumps({"citadel_models": catalog}))
    run = playbook_run("playbooks/llm_hosts.yml", "--tags", "nvidia_gpu", "-e", f"@{extra}")
    assert run.returncode != 0, run.stdout[-3000:]
    for name in lab_inventory.names("llm_servers"):
        assert (
            f"{name} serves smollm2-135m on GPUs (their resources.gpus), but no NVIDIA GPU is on its PCI bus. "
            "Serve them on a GPU host (their group), or drop resources.gpus and run this host with vllm_variant=cpu."
        ) in run.stdout, run.stdout[-3000:]
    assert not re.search(r"changed=[1-9]", run.stdout), run.stdout[-3000:]


def test_gpu_check_runs_every_step_and_refuses_a_host_without_gpu_models():
    """scripts/gpu-check.sh as an operator runs it, on a lab host: preflight, the driver role in
    --check, the plays applied, a second run that changes nothing; then its verification refuses,
    since the lab serves nothing on GPUs (the GPU half needs a GPU host)."""
    (name, *_) = lab_inventory.names("llm_servers")
    run = subprocess.run(
        ["scripts/gpu-check.sh", "-i", "inventory/lab", "-l", name],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    steps = re.findall(rf"^== gpu-check {name}: (\d)/5", run.stdout, re.M)
    assert steps == ["1", "2", "3", "4", "5"], run.stdout[-3000:] + run.stderr[-1000:]
    assert "not idempotent" not in run.stderr
    assert f"{name} serves no catalog model on GPUs (none of its models lists resources.gpus)" in run.stdout
    assert run.returncode != 0
    assert f"gpu-check: {name} passed" not in run.stdout
