"""host_tuning with every non-default option (molecule/tuning/inventory)."""

import lab_inventory
from machine_checks import test_machine_kernel_untouched  # noqa: F401  (collected here)

testinfra_hosts = lab_inventory.hosts("tuned")

SYSCTL_FILE = "/etc/sysctl.d/60-citadel-llm.conf"


def _sysctl_file(host) -> dict:
    lines = host.file(SYSCTL_FILE).content_string.splitlines()
    return dict((p.strip() for p in line.split("=", 1)) for line in lines if line and not line.startswith("#"))


def test_layers_merge_role_group_host(host):
    written = _sysctl_file(host)
    assert written["vm.swappiness"] == "1"  # role
    assert written["net.ipv4.tcp_keepalive_time"] == "600"  # group
    assert written["vm.dirty_ratio"] == "10"  # group, not namespaced
    assert written["net.ipv4.tcp_fin_timeout"] == "25"  # host beats group (20)
    assert written["net.core.somaxconn"] == "16384"  # host beats role (8192)
    assert written["vm.nr_hugepages"] == "16"


def test_namespaced_keys_live_with_host_overrides(host):
    assert host.run("sysctl -n net.core.somaxconn").stdout.strip() == "16384"
    assert host.run("sysctl -n net.ipv4.tcp_fin_timeout").stdout.strip() == "25"
    assert host.run("sysctl -n net.ipv4.tcp_keepalive_time").stdout.strip() == "600"


def test_thp_never_and_defer(host):
    unit = host.file("/etc/systemd/system/citadel-thp.service").content_string
    assert "echo never > /sys/kernel/mm/transparent_hugepage/enabled" in unit
    assert "echo defer > /sys/kernel/mm/transparent_hugepage/defrag" in unit
    assert host.service("citadel-thp.service").systemd_properties["ConditionResult"] == "no"


def test_governor_schedutil(host):
    unit = host.file("/etc/systemd/system/citadel-cpu-governor.service").content_string
    assert 'echo schedutil > "$g"' in unit
    props = host.service("citadel-cpu-governor.service").systemd_properties
    assert props["ConditionResult"] == "no"
    assert props["UnitFileState"] == "enabled"


def test_udev_rule_kyber_only_nvme(host):
    rules = [
        line
        for line in host.file("/etc/udev/rules.d/60-citadel-io-scheduler.rules").content_string.splitlines()
        if line.startswith("ACTION")
    ]
    assert len(rules) == 1
    assert 'KERNEL=="nvme[0-9]*n[0-9]*"' in rules[0]
    assert 'ATTR{queue/scheduler}="kyber"' in rules[0]
    assert 'ATTR{queue/read_ahead_kb}="2048"' in rules[0]


def test_limits_custom_user(host):
    limits = host.file("/etc/security/limits.d/60-citadel-llm.conf").content_string
    assert "inference  hard  nofile  131072" in limits
    assert "inference  soft  memlock  8388608" in limits
    assert "vllm" not in limits


def test_timezone_berlin_and_ntp_servers(host):
    assert host.file("/etc/localtime").linked_to == "/usr/share/zoneinfo/Europe/Berlin"
    assert host.run("date +%Z").stdout.strip() in ("CET", "CEST")
    conf = host.file("/etc/systemd/timesyncd.conf.d/60-citadel.conf").content_string
    assert "NTP=ntp1.lab.invalid ntp2.lab.invalid" in conf
