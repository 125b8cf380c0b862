"""host_tuning with its defaults, on every lab host (the whole site.yml run)."""

import lab_inventory
from machine_checks import test_machine_kernel_untouched  # noqa: F401  (collected here)

testinfra_hosts = lab_inventory.hosts()

SYSCTL_FILE = "/etc/sysctl.d/60-citadel-llm.conf"

# Role defaults: every host gets these.
ROLE_SYSCTL = {
    "vm.swappiness": "1",
    "vm.overcommit_memory": "1",
    "vm.max_map_count": "262144",
    "net.core.somaxconn": "8192",
    "net.core.netdev_max_backlog": "16384",
    "net.ipv4.tcp_max_syn_backlog": "8192",
    "net.ipv4.ip_local_port_range": "10240 65535",
}
# Group layers from group_vars/<group>/host_tuning.yml.
GROUP_SYSCTL = {
    "llm_servers": {"kernel.numa_balancing": "0"},
    "llm_gateway": {"net.ipv4.tcp_fin_timeout": "15", "net.ipv4.tcp_tw_reuse": "1"},
    "monitoring": {},
}
# Namespaced keys the role must have applied inside the container.
LIVE_KEYS = {
    "net.core.somaxconn",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_tw_reuse",
}


def _group_of(host) -> str:
    name = host.backend.get_hostname()
    return next(g for g in GROUP_SYSCTL if name in lab_inventory.names(g))


def _sysctl_file(host) -> dict:
    pairs = {}
    for line in host.file(SYSCTL_FILE).content_string.splitlines():
        if line and not line.startswith("#"):
            key, value = (part.strip() for part in line.split("=", 1))
            pairs[key] = value
    return pairs


def test_sysctl_file_holds_role_and_group_layers(host):
    f = host.file(SYSCTL_FILE)
    assert f.user == "root"
    assert f.mode == 0o644
    expected = {**ROLE_SYSCTL, **GROUP_SYSCTL[_group_of(host)]}
    written = _sysctl_file(host)
    for key, value in expected.items():
        assert written.get(key) == value, key
    # Huge pages: default min(1024, 10 % of RAM in 2 MiB pages); this machine has > 20 GiB.
    assert written["vm.nr_hugepages"] == "1024"


def test_namespaced_keys_are_live(host):
    expected = {**ROLE_SYSCTL, **GROUP_SYSCTL[_group_of(host)]}
    for key in LIVE_KEYS & expected.keys():
        live = host.run(f"sysctl -n {key}").stdout.split()
        assert live == expected[key].split(), key


def test_global_keys_not_visible_in_container(host):
    # create.yml masks /proc/sys/vm so even a buggy role cannot reach the host kernel.
    assert host.run("sysctl -n vm.swappiness").rc != 0


def test_tuning_units_enabled_and_skipped(host):
    for unit in ("citadel-thp.service", "citadel-cpu-governor.service"):
        svc = host.service(unit)
        assert svc.is_enabled, unit
        props = svc.systemd_properties
        # No writable cpufreq / THP in a container: the condition skips the unit.
        assert props["ConditionResult"] == "no", unit
        assert props["ActiveState"] == "inactive", unit
        assert props["Result"] == "success", unit


def test_thp_unit_sets_default_modes(host):
    unit = host.file("/etc/systemd/system/citadel-thp.service").content_string
    assert "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled" in unit
    assert "echo madvise > /sys/kernel/mm/transparent_hugepage/defrag" in unit
    assert "ConditionPathIsReadWrite=/sys/kernel/mm/transparent_hugepage/enabled" in unit


def test_cpu_governor_unit(host):
    unit = host.file("/etc/systemd/system/citadel-cpu-governor.service").content_string
    assert 'echo performance > "$g"' in unit
    assert "ConditionPathExists=/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor" in unit


def test_io_scheduler_udev_rule(host):
    rule = host.file("/etc/udev/rules.d/60-citadel-io-scheduler.rules").content_string
    for pattern in ("nvme[0-9]*n[0-9]*", "sd[a-z]*", "vd[a-z]*"):
        assert (
            f'KERNEL=="{pattern}", ATTR{{queue/rotational}}=="0", '
            f'ATTR{{queue/scheduler}}="mq-deadline", ATTR{{queue/read_ahead_kb}}="4096"'
        ) in rule


def test_limits_for_service_users(host):
    limits = host.file("/etc/security/limits.d/60-citadel-llm.conf").content_string.split("\n")
    for user in ("vllm", "citadel"):
        for kind in ("soft", "hard"):
            assert f"{user}  {kind}  nofile  65536" in limits
            assert f"{user}  {kind}  memlock  unlimited" in limits


def test_timezone_and_ntp(host):
    assert host.file("/etc/localtime").linked_to == "/usr/share/zoneinfo/Etc/UTC"
    assert host.file("/etc/timezone").content_string == "Etc/UTC\n"
    assert host.service("systemd-timesyncd").is_enabled
    conf = host.file("/etc/systemd/timesyncd.conf.d/60-citadel.conf").content_string
    assert "NTP=" not in conf  # empty list keeps the distribution's pool


def test_tools_installed(host):
    for pkg in ("numactl", "tzdata", "systemd-timesyncd", "udev"):
        assert host.package(pkg).is_installed, pkg
