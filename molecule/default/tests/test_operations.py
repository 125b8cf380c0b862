"""The operator playbooks, under a probe load through the gateway that counts every request.

drain.yml / undrain.yml take an LLM host out of the gateway and put it back; rolling_restart.yml
restarts every model server one host at a time; verify.yml checks what a user would, read-only.
Each runs against the live lab as an operator runs it; nothing may fail meanwhile.
"""

import json
import time
import urllib.request

import lab_inventory
import lab_ops
from lab_ops import API_KEY, playbook, unit_times
from probe import Probe

DRAINED = "citadel-llm-01"
# The node_exporter target Prometheus scrapes on it: the host's citadel_address (its lab_ip).
NODE_URL = f"http://{lab_inventory.endpoint(DRAINED, 9100)}/metrics"


def client_requests(port: int = 11403) -> float:
    """Requests with max_tokens above 1 that the SmolLM2 server on DRAINED took (its /metrics,
    published on loopback): the probe's (max_tokens 8), not the gateway's 1-token health checks,
    which go on while a replica is drained."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        lines = resp.read().decode().splitlines()

    def value(prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))

    return value("vllm:request_params_max_tokens_count{") - value(
        'vllm:request_params_max_tokens_bucket{engine="0",le="1.0"'
    )


def target_health(url: str) -> str:
    """What the lab's Prometheus says of the target it scrapes at `url`."""
    with urllib.request.urlopen("http://127.0.0.1:9090/api/v1/targets?state=active", timeout=10) as resp:
        targets = json.loads(resp.read())["data"]["activeTargets"]
    return next(t["health"] for t in targets if t["scrapeUrl"] == url)


def test_drain_and_undrain_a_host_under_load():
    with Probe(API_KEY) as probe:
        time.sleep(3)
        t0 = time.monotonic()
        playbook("playbooks/drain.yml", "-l", DRAINED)
        drained_in = time.monotonic() - t0
        view = lab_ops.admin_replicas(f"host={lab_inventory.address(DRAINED)}")
        assert view["replicas"], view
        assert all(r["draining"] for r in view["replicas"]), view
        assert view["outstanding"] == 0, view
        # Drained: the probe goes on, served by the other replica; this one gets nothing new.
        served = client_requests()
        time.sleep(10)
        assert client_requests() == served, "a drained replica was sent requests"
        t1 = time.monotonic()
        playbook("playbooks/undrain.yml", "-l", DRAINED)
        undrained_in = time.monotonic() - t1
        view = lab_ops.admin_replicas(f"host={lab_inventory.address(DRAINED)}")
        assert not any(r["draining"] for r in view["replicas"]), view
        assert all(r["healthy"] and r["circuit"] == "closed" for r in view["replicas"]), view
        time.sleep(5)
    print(f"drain.yml {drained_in:.0f} s, undrain.yml {undrained_in:.0f} s; probe: {probe.report}")
    assert probe.report.clean(), str(probe.report)
    assert client_requests() > served, "the undrained replica gets requests again"


def test_rolling_restart_restarts_everything_one_host_at_a_time_under_load():
    before = unit_times()
    with Probe(API_KEY) as probe:
        time.sleep(3)
        t0 = time.monotonic()
        out = playbook("playbooks/rolling_restart.yml")
        took = time.monotonic() - t0
        time.sleep(3)
    after, stopped = unit_times(), unit_times("InactiveEnterTimestampMonotonic")
    print(f"rolling_restart.yml {took:.0f} s; probe: {probe.report}")
    assert set(after) == set(before)
    for replica, start in before.items():
        assert after[replica] > start, f"{replica} was not restarted"
    # One host at a time: every unit of the second host stopped after the first host's were back.
    hosts = sorted(lab_ops.LLM_HOSTS)
    first_back = max(t for (h, _), t in after.items() if h == hosts[0])
    assert all(t > first_back for (h, _), t in stopped.items() if h == hosts[1]), (after, stopped)
    assert "all-minilm-l6-v2 has one replica (citadel-llm-02)" in " ".join(out.split())
    assert probe.report.clean(), str(probe.report)


def test_verify_passes_read_only_even_under_check():
    for args in ((), ("--check",)):
        out = playbook("playbooks/verify.yml", *args)
        assert "changed=0" in out
        assert "failed=0" in out
        # It checked, not skipped: every model answered through the gateway.
        assert "Every catalog model answers through the gateway" in out


def test_verify_fails_on_a_target_that_is_down():
    node = lab_ops.host("citadel-llm-01")
    node.run("systemctl stop prometheus-node-exporter.service")
    try:
        # Prometheus reports a target by its last scrape: wait for the one after the stop.
        for _ in range(30):
            if target_health(NODE_URL) == "down":
                break
            time.sleep(2)
        run = lab_ops.playbook_run("playbooks/verify.yml")
    finally:
        node.run("systemctl start prometheus-node-exporter.service")
    text = " ".join(run.stdout.split())
    assert run.returncode != 0
    assert f"not up: node {NODE_URL}" in text, run.stdout[-3000:]
