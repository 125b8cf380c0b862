"""Operator actions against the live lab, for the tests that check what they do.

Playbooks run from the repository root with the lab inventory, as an operator
runs them; unit start and stop times come from systemd on each LLM host.
"""

import json
import os
import shlex
import subprocess
import time
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


def psql(sql: str, role: str | None = None) -> tuple[int, str]:
    """``sql`` on the usage database (the lab's database host) as the postgres superuser, or as
    ``role`` through SET ROLE; its exit status and output (unaligned, tuples only)."""
    if role is not None:
        sql = f"SET ROLE {role}; {sql}"
    (db,) = lab_inventory.names("database")
    out = host(db).run(
        f"runuser -u postgres -- psql -X -A -t -q -v ON_ERROR_STOP=1 -d citadel_usage -c {shlex.quote(sql)}"
    )
    return out.rc, (out.stdout + out.stderr).strip()


USAGE_COLUMNS = ("request_id", "key_name", "model", "status", "prompt_tokens", "completion_tokens", "cut")


def usage_rows(prefix: str, want: int, timeout: float = 30) -> list[dict]:
    """The usage rows whose request id starts with ``prefix``, once there are ``want`` of them
    (the gateways insert every second) or ``timeout`` passed."""
    sql = f"SELECT {', '.join(USAGE_COLUMNS)} FROM citadel.usage_events WHERE request_id LIKE '{prefix}%'"
    deadline = time.monotonic() + timeout
    while True:
        rc, out = psql(sql)
        assert rc == 0, out
        rows = [dict(zip(USAGE_COLUMNS, ln.split("|"), strict=True)) for ln in out.splitlines() if ln]
        if len(rows) >= want or time.monotonic() > deadline:
            return rows
        time.sleep(1)


def usage_report(*args: str) -> list[dict]:
    """`citadel-gateway usage --json ARGS` from the controller (an operator's workstation: one of
    the lab's admin sources), as the report role, against the lab's database host."""
    venv = CACHE / "gateway-venv"
    subprocess.run([str(REPO / "files/gateway/scripts/venv.sh")], env={**os.environ, "GATEWAY_VENV": str(venv)},
                   check=True, capture_output=True, timeout=600)  # fmt: skip
    (db,) = lab_inventory.names("database")
    url = f"postgresql://citadel_report@{lab_inventory.address(db)}:5432/citadel_usage"
    password = CACHE / "lab-postgresql-report-password"
    run = subprocess.run(
        [str(venv / "bin/citadel-gateway"), "usage", "--database-url", url, "--password-file", str(password),
         "--json", *args], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return [json.loads(ln) for ln in run.stdout.splitlines()]
