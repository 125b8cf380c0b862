"""The firewall's rules from the inventory (roles/firewall): who may reach which port, merged
into what nftables accepts, and names refused with the fix."""

import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "roles/firewall/filter_plugins"))

from ansible.errors import AnsibleFilterError  # noqa: E402
from firewall_rules import firewall_covers, firewall_rules  # noqa: E402

GROUPS = {"llm_servers": ["llm"], "llm_gateway": ["gw"], "monitoring": ["mon"], "redis": ["mon"], "database": ["mon"]}
SETTINGS = {
    "ssh_port": 22, "admin_sources": ["10.0.0.0/8", "10.1.2.3"], "gateway_client_sources": ["0.0.0.0/0", "::/0"],
    "model_extra_sources": [], "metrics_extra_sources": ["10.9.0.1"],
    "gateway_group": "llm_gateway", "monitoring_group": "monitoring", "redis_group": "redis",
    "database_group": "database",
    "gateway_sources": ["10.5.0.20", "fd00::20"], "monitoring_sources": ["10.5.0.30"],
    "gateway_port": 8000, "gateway_metrics_port": 8001,
    "node_exporter_port": 9100, "prometheus_port": 9090, "redis_port": 6379, "postgresql_port": 5432,
    "gpu_hosts": [], "dcgm_exporter_port": 9400,
}  # fmt: skip


def _catalog(address: str) -> list[dict]:
    return [{"name": "chat", "replicas": [{"host": "llm", "address": address, "port": 11400}]}]


def _by_port(rules: list[dict]) -> dict[int, dict]:
    return {r["port"]: r for r in rules}


def test_each_host_opens_what_it_serves_to_whom_the_layout_says():
    llm = _by_port(firewall_rules("llm", _catalog("10.5.0.10"), GROUPS, SETTINGS))
    assert set(llm) == {22, 9100, 11400}
    # overlapping sources are merged: nftables refuses overlapping intervals in one set
    assert llm[22]["ipv4"] == ["10.0.0.0/8"]
    assert (llm[11400]["daddr"], llm[11400]["ipv4"]) == ("10.5.0.10", ["10.5.0.20", "10.5.0.30"])
    assert llm[11400]["ipv6"] == []  # an IPv4 endpoint: IPv6 sources could never match it
    gw = _by_port(firewall_rules("gw", [], GROUPS, SETTINGS))
    assert set(gw) == {22, 9100, 8000, 8001}
    # clients reach the API port, not the /metrics listener (nor node_exporter)
    assert (gw[8000]["ipv4"], gw[8000]["ipv6"]) == (["0.0.0.0/0"], ["::/0"])
    assert gw[8001]["ipv4"] == gw[9100]["ipv4"] == ["10.5.0.30", "10.9.0.1"]
    assert gw[8001]["ipv6"] == []
    mon = _by_port(firewall_rules("mon", [], GROUPS, SETTINGS))
    assert (mon[9090]["ipv4"], mon[6379]["ipv4"], mon[6379]["ipv6"]) == (["10.0.0.0/8"], ["10.5.0.20"], ["fd00::20"])
    # the usage database: the gateways write, the admin hosts read the report
    assert (mon[5432]["ipv4"], mon[5432]["ipv6"]) == (["10.0.0.0/8"], ["fd00::20"])
    assert set(mon) == {22, 9100, 9090, 6379, 5432}


def test_a_gpu_host_opens_its_gpu_metrics_to_the_scrapers_only():
    rules = _by_port(firewall_rules("llm", _catalog("10.5.0.10"), GROUPS, {**SETTINGS, "gpu_hosts": ["llm"]}))
    assert set(rules) == {22, 9100, 9400, 11400}
    assert (rules[9400]["ipv4"], rules[9400]["ipv6"]) == (["10.5.0.30", "10.9.0.1"], [])
    assert rules[9400]["name"] == "dcgm exporter"


def test_an_ipv6_endpoint_takes_only_ipv6_sources():
    rule = _by_port(firewall_rules("llm", _catalog("fd00::10"), GROUPS, SETTINGS))[11400]
    assert (rule["daddr"], rule["ipv4"], rule["ipv6"]) == ("fd00::10", [], ["fd00::20"])


def test_a_peer_known_by_name_is_refused_with_the_fix():
    settings = {**SETTINGS, "gateway_sources": ["gw.example"]}
    with pytest.raises(AnsibleFilterError, match="'gw.example' is not an IP .* set its citadel_address"):
        firewall_rules("llm", _catalog("10.5.0.10"), GROUPS, settings)


def test_covers():
    assert firewall_covers(["10.0.0.0/8"], "10.89.42.1")
    assert not firewall_covers(["192.0.2.0/24", "fd00::/8"], "10.89.42.1")


def test_a_llama_cpp_server_on_a_host_is_opened_like_a_replica():
    settings = {**SETTINGS, "local_model_servers": [{"name": "gguf", "port": 11405}], "address": "10.5.0.10"}
    rules = _by_port(firewall_rules("llm", _catalog("10.5.0.10"), GROUPS, settings))
    assert set(rules) == {22, 9100, 11400, 11405}
    assert (rules[11405]["daddr"], rules[11405]["ipv4"]) == ("10.5.0.10", ["10.5.0.20", "10.5.0.30"])
    assert rules[11405]["name"] == "model gguf"
