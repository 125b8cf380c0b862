"""Both inventories load the shared group_vars, and the lab is the default."""

import json

import pytest
from conftest import REPO

INVENTORIES = {
    "production": ("hx-llm-server-01", "hx-orchestration-server"),
    "lab": ("citadel-llm-01", "citadel-gateway-01"),
}


@pytest.mark.parametrize("env", INVENTORIES)
def test_shared_group_vars_load_without_a_playbook(ansible, env):
    # No playbook dir is involved here: only the inventory's own links can
    # bring in group_vars/ — the case of `ansible-playbook playbooks/x.yml`.
    llm_host, gateway_host = INVENTORIES[env]
    llm = json.loads(ansible("ansible-inventory", "-i", f"inventory/{env}", "--host", llm_host).stdout)
    gateway = json.loads(ansible("ansible-inventory", "-i", f"inventory/{env}", "--host", gateway_host).stdout)
    assert llm["citadel_environment"] == env
    assert llm["citadel_base_dir"] == "/opt/citadel"  # group_vars/all
    assert llm["host_tuning_sysctl_group_parameters"] == {"kernel.numa_balancing": 0}  # group_vars/llm_servers
    assert gateway["host_tuning_sysctl_group_parameters"]["net.ipv4.tcp_fin_timeout"] == 15


@pytest.mark.parametrize("env", INVENTORIES)
def test_shared_group_vars_load_in_a_standalone_playbook(ansible, env):
    # playbooks/verify.yml's directory has no group_vars: values must come via the inventory.
    llm_host, _ = INVENTORIES[env]
    out = ansible(
        "ansible",
        "-i",
        f"inventory/{env}",
        llm_host,
        "-m",
        "ansible.builtin.debug",
        "-a",
        "var=citadel_log_dir",
        "--playbook-dir",
        "playbooks",
    )
    assert out.returncode == 0, out.stderr
    assert '"citadel_log_dir": "/var/log/citadel-llm"' in out.stdout


def test_every_shared_group_dir_is_linked_from_both_inventories():
    for group_dir in (REPO / "group_vars").iterdir():
        for env in INVENTORIES:
            link = REPO / "inventory" / env / "group_vars" / group_dir.name / "shared"
            assert link.is_symlink(), f"{link} missing: ln -s ../../../../group_vars/{group_dir.name} {link}"
            assert link.resolve() == group_dir.resolve()


def test_default_inventory_is_the_lab(ansible):
    hosts = json.loads(ansible("ansible-inventory", "--list").stdout)["_meta"]["hostvars"]
    assert "citadel-llm-01" in hosts
    assert not any(name.startswith("hx-") for name in hosts)


def test_production_topology(ansible):
    groups = json.loads(ansible("ansible-inventory", "-i", "inventory/production", "--list").stdout)
    assert groups["llm_servers"]["children"] == ["llm_heavy", "llm_light"]
    assert groups["llm_heavy"]["hosts"] == ["hx-llm-server-01"]
    assert groups["llm_light"]["hosts"] == ["hx-llm-server-02"]
    addresses = {h: v["ansible_host"] for h, v in groups["_meta"]["hostvars"].items()}
    assert addresses == {
        "hx-llm-server-01": "192.168.10.29",
        "hx-llm-server-02": "192.168.10.28",
        "hx-orchestration-server": "192.168.10.31",
        "hx-metrics-server": "192.168.10.37",
    }
