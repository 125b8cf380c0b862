"""roles/nvidia_gpu on the lab's LLM hosts, which have no NVIDIA GPU: the role finds none on the
PCI bus, says so for each host, changes nothing and installs nothing (the GPU path itself needs
real GPUs; roles/nvidia_gpu/README.md says what ran where)."""

import re

import lab_inventory
from lab_ops import LLM_HOSTS, playbook

NOTHING_OF_OURS = (
    "/etc/modprobe.d/citadel-nvidia.conf",
    "/etc/modules-load.d/citadel-nvidia.conf",
    "/etc/systemd/system/citadel-nvidia-devices.service",
    "/var/lib/citadel/nvidia-gpu-reboot-due",
)


def test_the_gpu_role_reports_no_gpu_and_changes_nothing_on_the_lab():
    out = playbook("playbooks/llm_hosts.yml", "--tags", "nvidia_gpu")
    for name in lab_inventory.names("llm_servers"):
        assert f"{name}: no NVIDIA GPU on the PCI bus; nvidia_gpu leaves this host as it is." in out, out[-3000:]
        assert re.search(rf"^{re.escape(name)}\s+: ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", out, re.M)
    # the role ended before its install: not one task of it ran past the report
    assert "Install the driver" not in out
    assert "Is a driver reboot due here" in out, "the reboot play ran (and found nothing to reboot)"
    for name, on in LLM_HOSTS.items():
        assert not [p for p in NOTHING_OF_OURS if on.file(p).exists], name
        assert not on.package("nvidia-utils-580-server").is_installed
        assert not on.exists("nvidia-smi")
