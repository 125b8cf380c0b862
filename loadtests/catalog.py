"""The model catalog and its replicas, read from an Ansible inventory.

Never a copy of group_vars: `ansible-inventory --list` resolves the catalog
exactly as a playbook run would (group_vars/all/models.yml, or the lab's
override in inventory/lab/group_vars/lab/models.yml). No Locust imports, so
the gates and the tests use it without a running load test.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_INVENTORY = REPO / "inventory" / "lab"


@dataclass(frozen=True)
class Model:
    name: str
    capabilities: tuple[str, ...]
    group: str
    port: int
    avg_ms: float | None
    p95_ms: float | None
    replicas: tuple[str, ...] = field(default=())  # base URLs of its vLLM servers, e.g. http://127.0.0.1:11403

    @property
    def is_embedding(self) -> bool:
        return "embedding" in self.capabilities


def _unwrap(value):
    """ansible-inventory marks some values (cached facts) as {"__ansible_unsafe": x}."""
    if isinstance(value, dict):
        if set(value) == {"__ansible_unsafe"}:
            return value["__ansible_unsafe"]
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _ansible_inventory() -> str:
    found = shutil.which("ansible-inventory")
    if found:
        return found
    # Same venv as the running interpreter (Locust from .venv without .venv/bin on PATH).
    return str(Path(sys.executable).parent / "ansible-inventory")


@functools.cache
def load_inventory(inventory: str | os.PathLike = DEFAULT_INVENTORY) -> dict:
    """`ansible-inventory -i INVENTORY --list`, run from the repository (its ansible.cfg)."""
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    run = subprocess.run(
        [_ansible_inventory(), "-i", str(inventory), "--list"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if run.returncode != 0:
        raise RuntimeError(f"ansible-inventory -i {inventory} failed: {run.stderr.strip()[-2000:]}")
    return _unwrap(json.loads(run.stdout))


def group_hosts(inventory: dict, group: str) -> list[str]:
    """Every host of `group`, children included, in inventory order."""
    found: list[str] = []
    pending = [group]
    seen: set[str] = set()
    while pending:
        name = pending.pop(0)
        if name in seen:
            continue
        seen.add(name)
        entry = inventory.get(name, {})
        found.extend(h for h in entry.get("hosts", []) if h not in found)
        pending.extend(entry.get("children", []))
    return found


def _published(hostvars: dict, port: int) -> str | None:
    """The controller-side address of a lab container port (lab_publish "ip:hostport:containerport")."""
    for spec in hostvars.get("lab_publish", []) or []:
        parts = str(spec).split(":")
        if len(parts) == 3 and int(parts[2]) == port:
            return f"http://{parts[0]}:{parts[1]}"
        if len(parts) == 2 and int(parts[1]) == port:
            return f"http://127.0.0.1:{parts[0]}"
    return None


def replica_url(hostname: str, hostvars: dict, port: int) -> str:
    """Where a model's vLLM server on `hostname` answers, seen from this machine."""
    published = _published(hostvars, port)
    if published:
        return published
    # The role binds vllm_listen_address; a literal address is what the gateway uses too.
    listen = str(hostvars.get("vllm_listen_address", ""))
    if listen and "{" not in listen and listen not in ("0.0.0.0", "::"):
        return f"http://{listen}:{port}"
    return f"http://{hostvars.get('ansible_host', hostname)}:{port}"


def catalog_hostvars(inventory: dict) -> dict:
    """Variables of the host whose catalog counts: a gateway host's (it routes by it), else any."""
    hostvars = inventory.get("_meta", {}).get("hostvars", {})
    for host in group_hosts(inventory, "llm_gateway") + list(hostvars):
        if hostvars.get(host, {}).get("citadel_models"):
            return hostvars[host]
    raise RuntimeError("no host of the inventory has citadel_models")


def models(inventory: dict) -> list[Model]:
    """The catalog, each model with its latency targets and replica URLs."""
    hostvars = inventory.get("_meta", {}).get("hostvars", {})
    out = []
    for entry in catalog_hostvars(inventory)["citadel_models"]:
        latency = entry.get("latency_ms") or {}
        port = int(entry["port"])
        out.append(
            Model(
                name=entry["name"],
                capabilities=tuple(entry.get("capabilities", [])),
                group=entry["group"],
                port=port,
                avg_ms=float(latency["avg"]) if latency.get("avg") is not None else None,
                p95_ms=float(latency["p95"]) if latency.get("p95") is not None else None,
                replicas=tuple(
                    replica_url(h, hostvars.get(h, {}), port) for h in group_hosts(inventory, entry["group"])
                ),
            )
        )
    return out


def load(inventory: str | os.PathLike = DEFAULT_INVENTORY) -> list[Model]:
    return models(load_inventory(str(inventory)))
