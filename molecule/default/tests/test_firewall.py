"""The lab hosts' nftables firewall (roles/firewall), tried from the lab's own hosts.

The expected rules are derived here from the inventory (groups, addresses, the catalog's
ports), not from the role's filter or template: a rule the inventory does not imply, or a
missing one, fails. Traffic only goes between the lab's containers and this machine.
"""

import ipaddress
import json
import re
import socket

import lab_inventory
import pytest
import testinfra
from lab_ops import playbook_run

GATEWAYS = lab_inventory.names("llm_gateway")
MONITORS = lab_inventory.names("monitoring")
REDIS = lab_inventory.names("redis")
DATABASE = lab_inventory.names("database")
ANYWHERE = {ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")}
# The controller (this machine) reaches the lab from the lab network's gateway address.
CONTROLLER = str(next(ipaddress.ip_network(lab_inventory.hostvars(GATEWAYS[0])["lab_subnet"]).hosts()))
TABLE = "citadel_firewall"


def _nets(addresses) -> set:
    return {ipaddress.ip_network(a) for a in addresses}


def expected(name: str) -> dict[tuple[int, str | None], set]:
    """(TCP port, destination) -> the networks allowed to reach it on host `name`, from the
    inventory alone. A model's destination is its replica's address; other services take any."""
    admin = _nets([CONTROLLER])
    gateways = _nets(lab_inventory.address(g) for g in GATEWAYS)
    monitors = _nets(lab_inventory.address(m) for m in MONITORS)
    # The lab lets the controller read the metrics listeners and call model servers directly
    # (locust --direct).
    rules: dict[tuple[int, str | None], set] = {(22, None): set(admin), (9100, None): monitors | admin}
    for model in lab_inventory.models_on(name):
        replica = lab_inventory.replica(name, model)
        rules.setdefault((replica["port"], replica["address"]), set()).update(gateways | monitors | admin)
    for server in lab_inventory.hostvars(name).get("llama_cpp_server_models", []):  # a model at a base_url
        rules.setdefault((server["port"], lab_inventory.address(name)), set()).update(gateways | monitors | admin)
    if name in GATEWAYS:
        rules.setdefault((8000, None), set()).update(ANYWHERE)
        rules.setdefault((8001, None), set()).update(monitors | admin)
    if name in MONITORS:
        rules.setdefault((9090, None), set()).update(admin)
    if name in REDIS:
        rules.setdefault((6379, None), set()).update(gateways)
    if name in DATABASE:  # the gateways write usage, the admin hosts read the report
        rules.setdefault((5432, None), set()).update(gateways | admin)
    return {key: set(ipaddress.collapse_addresses(n for n in nets if n.version == 4))
            | set(ipaddress.collapse_addresses(n for n in nets if n.version == 6))
            for key, nets in rules.items()}  # fmt: skip


def _element_nets(value) -> list:
    """An nft JSON saddr operand (address, prefix, range or a set of them) as networks."""
    if isinstance(value, str):
        return [ipaddress.ip_network(value)]
    if isinstance(value, list):
        return [n for v in value for n in _element_nets(v)]
    if "set" in value:
        return _element_nets(value["set"])
    if "prefix" in value:
        return [ipaddress.ip_network(f"{value['prefix']['addr']}/{value['prefix']['len']}")]
    if "range" in value:
        lo, hi = (ipaddress.ip_address(a) for a in value["range"])
        return list(ipaddress.summarize_address_range(lo, hi))
    raise AssertionError(f"unexpected saddr operand {value!r}")


def loaded(host) -> tuple[dict, dict[tuple[int, str | None], set]]:
    """The input chain of the loaded table, and (TCP port, destination) -> the networks its
    accept rules let in."""
    out = host.run(f"nft -j list table inet {TABLE}")
    assert out.rc == 0, out.stderr
    items = json.loads(out.stdout)["nftables"]
    chain = next(i["chain"] for i in items if "chain" in i)
    ports: dict[tuple[int, str | None], set] = {}
    for rule in (i["rule"] for i in items if "rule" in i):
        matches = [e["match"] for e in rule["expr"] if "match" in e]
        dport = [m["right"] for m in matches if m["left"].get("payload", {}).get("field") == "dport"
                 and m["left"]["payload"]["protocol"] == "tcp"]  # fmt: skip
        if not dport:
            continue
        saddr = [m["right"] for m in matches if m["left"].get("payload", {}).get("field") == "saddr"]
        daddr = [m["right"] for m in matches if m["left"].get("payload", {}).get("field") == "daddr"]
        assert saddr, f"an accept rule without a source restriction: {rule}"
        assert any("accept" in e for e in rule["expr"]), rule
        ports.setdefault((int(dport[0]), daddr[0] if daddr else None), set()).update(_element_nets(saddr[0]))
    return chain, ports


@pytest.mark.parametrize("name", lab_inventory.names("all"))
def test_loaded_rules_are_what_the_inventory_implies(name):
    chain, ports = loaded(testinfra.get_host(f"podman://{name}"))
    assert (chain["hook"], chain["policy"]) == ("input", "drop")
    assert ports == expected(name)


def _connects(host, endpoint: str) -> bool:
    """Whether a TCP connection from lab host `host` to `endpoint` opens within 3 s."""
    address, port = endpoint.rsplit(":", 1)
    script = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()"
    return host.run("python3 -c %s %s %s", script, address.strip("[]"), port).rc == 0


def test_only_gateway_and_monitoring_hosts_reach_a_model_server():
    others = [n for n in lab_inventory.names("llm_servers") if n not in GATEWAYS + MONITORS]
    host, model = lab_inventory.served_models()[0]
    target = lab_inventory.replica(host, model)["endpoint"]
    outsider = next(n for n in others if n != host)
    assert not _connects(testinfra.get_host(f"podman://{outsider}"), target), f"{outsider} reached {target}"
    for allowed in (GATEWAYS[0], MONITORS[0]):
        assert _connects(testinfra.get_host(f"podman://{allowed}"), target), f"{allowed} did not reach {target}"


@pytest.mark.parametrize("port", [9100, 8001], ids=["node_exporter", "gateway metrics"])
def test_metrics_listeners_answer_only_the_monitoring_hosts(port):
    """node_exporter and the gateway's /metrics listener; the gateway's API port takes anyone."""
    client = testinfra.get_host(f"podman://{lab_inventory.names('llm_servers')[0]}")
    assert not _connects(client, lab_inventory.endpoint(GATEWAYS[0], port))
    assert _connects(testinfra.get_host(f"podman://{MONITORS[0]}"), lab_inventory.endpoint(GATEWAYS[0], port))
    assert _connects(client, lab_inventory.endpoint(GATEWAYS[0], 8000))


def test_preflight_refuses_admin_sources_that_leave_out_the_controller():
    run = playbook_run("playbooks/preflight.yml", "--limit", GATEWAYS[-1], "-e",
                       json.dumps({"firewall_admin_sources": ["192.0.2.0/24"]}), timeout=300)  # fmt: skip
    text = " ".join(run.stdout.split())
    assert run.returncode != 0
    assert f"firewall_admin_sources (192.0.2.0/24) leaves out {CONTROLLER}" in text, text[-3000:]
    assert f'firewall_admin_sources: ["{CONTROLLER}/32"]' in text
    assert re.search(r"changed=0 .*failed=1", text)


def test_rules_that_cut_the_controller_off_roll_back_by_themselves():
    """Preflight skipped (as if it had passed), rules that leave the controller out are loaded
    on one gateway: the run fails saying so, and the host puts its rules back by itself."""
    name = GATEWAYS[-1]
    host = testinfra.get_host(f"podman://{name}")
    before = host.file("/etc/citadel/firewall.nft").content_string
    settings = {"citadel_preflight_passed": True, "firewall_admin_sources": ["192.0.2.1"],
                "firewall_confirm_timeout_s": 5, "firewall_rollback_after_s": 25}  # fmt: skip
    run = playbook_run("playbooks/hosts.yml", "--tags", "firewall", "--limit", name, "-e", json.dumps(settings),
                       timeout=300)  # fmt: skip
    assert run.returncode != 0
    assert "The new rules cut this controller off" in " ".join(run.stdout.split()), run.stdout[-3000:]
    ssh = (lab_inventory.address(name), 22)
    with pytest.raises(TimeoutError):  # dropped, not refused
        socket.create_connection(ssh, timeout=2).close()
    deadline_s = 40
    for _ in range(deadline_s):
        try:
            socket.create_connection(ssh, timeout=1).close()
            break
        except OSError:
            pass
    else:
        pytest.fail(f"{name} still drops the controller's SSH {deadline_s} s later")
    assert host.file("/etc/citadel/firewall.nft").content_string == before
    assert loaded(host)[1] == expected(name)
