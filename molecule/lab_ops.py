"""Operator actions against the live lab, for the tests that check what they do.

Playbooks run from the repository root with the lab inventory, as an operator
runs them; unit start and stop times come from systemd on each LLM host.
"""

import json
import os
import subprocess
import urllib.request
from pathlib import Path

import lab_inventory
import testinfra

REPO = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])
CACHE = Path(os.environ.get("CITADEL_CACHE") or REPO / ".cache")
API_KEY = (CACHE / "lab-gateway-api-key").read_text().strip()
ADMIN_KEY = (CACHE / "lab-gateway-admin-key").read_text().strip()


def host(name: str):
    """testinfra's handle on a lab host."""
    return testinfra.get_host(f"podman://{name}")


LLM_HOSTS = {name: host(name) for name in lab_inventory.names("llm_servers")}


def playbook_run(path: str, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run `path` against the lab as an operator does; the finished process."""
    return subprocess.run(
        ["ansible-playbook", "-i", "inventory/lab", path, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def playbook(path: str, *args: str, timeout: int = 1200) -> str:
    """Run `path` against the lab; its stdout. Fails the test with the output's tail if it fails."""
    run = playbook_run(path, *args, timeout=timeout)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    return run.stdout


def started(on, unit: str) -> int:
    """When `unit` on host `on` last started (monotonic µs)."""
    return int(on.run(f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}").stdout)


def unit_times(prop: str = "ActiveEnterTimestampMonotonic") -> dict[tuple[str, str], int]:
    """A monotonic systemd timestamp (µs; one kernel clock for every lab container) of every
    model unit on every LLM host, by (host, model): ActiveEnter is when it last started,
    InactiveEnter when it last stopped."""
    out = {}
    for name, host in LLM_HOSTS.items():
        units = host.run("systemctl list-units --plain --no-legend 'vllm-*.service'").stdout.split()
        for unit in (u for u in units if u.startswith("vllm-") and u.endswith(".service")):
            stamp = host.run(f"systemctl show -p {prop} --value {unit}").stdout.strip()
            out[(name, unit.removeprefix("vllm-").removesuffix(".service"))] = int(stamp)
    return out


def admin_replicas(query: str = "", port: int = 8000) -> dict:
    """The lab gateway's admin view of its replicas (GET /admin/replicas?query)."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/replicas?{query}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())
