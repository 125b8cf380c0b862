"""The model catalog and its replicas, read from an Ansible inventory.

Never a copy of group_vars nor a parser of its own: the catalog comes from the
same citadel_catalog filter the roles use (roles/citadel_catalog), evaluated by
Ansible against the inventory, so every default, check and replica endpoint is
the one a playbook run would see (group_vars/all/models.yml, or the lab's
override in inventory/lab/group_vars/lab/models.yml). No Locust imports, so the
gates and the tests use it without a running load test.
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
FILTERS = REPO / "roles" / "citadel_catalog" / "filter_plugins"


@dataclass(frozen=True)
class Model:
    name: str
    capabilities: tuple[str, ...]
    group: str | None  # None: a model at a base_url (served by no host of the inventory)
    port: int | None
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


def _tool(name: str) -> str:
    # Same venv as the running interpreter (Locust from .venv without .venv/bin on PATH).
    return shutil.which(name) or str(Path(sys.executable).parent / name)


def _env() -> dict:
    return {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}


@functools.cache
def load_inventory(inventory: str | os.PathLike = DEFAULT_INVENTORY) -> dict:
    """`ansible-inventory -i INVENTORY --list`, run from the repository (its ansible.cfg)."""
    run = subprocess.run(
        [_tool("ansible-inventory"), "-i", str(inventory), "--list"],
        cwd=REPO,
        env=_env(),
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


_EXPRESSION = (
    "{{ {'models': citadel_models | citadel_catalog(groups, hostvars),"
    " 'addresses': groups['all'] | citadel_endpoints(0, hostvars) | items2dict('host', 'address')} | to_json }}"
)


@functools.cache
def _evaluate(inventory: str, extra_vars: str | None) -> dict:
    """The catalog as the roles see it (`citadel_models | citadel_catalog(groups, hostvars)`) and every
    host's address, evaluated by Ansible for a gateway host (it routes by that catalog), else the
    first host. Nothing connects to a host."""
    inv = load_inventory(str(inventory))
    hosts = group_hosts(inv, "llm_gateway") + group_hosts(inv, "all")
    if not hosts:
        raise RuntimeError(f"the inventory {inventory} has no hosts")
    args = [_tool("ansible"), "-i", str(inventory), hosts[0], "-m", "ansible.builtin.debug",
            "-a", f"msg={_EXPRESSION}"]  # fmt: skip
    if extra_vars:
        args += ["-e", extra_vars]
    env = {**_env(), "ANSIBLE_FILTER_PLUGINS": str(FILTERS), "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
           "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json"}  # fmt: skip
    run = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    try:
        # the JSON report, then ansible.cfg's profile_tasks recap
        report = json.JSONDecoder().raw_decode(run.stdout[run.stdout.index("{") :])[0]
        result = report["plays"][0]["tasks"][0]["hosts"][hosts[0]]
    except (ValueError, KeyError, IndexError):
        raise RuntimeError(f"reading the catalog of {inventory} failed: {(run.stdout + run.stderr)[-2000:]}") from None
    if result.get("failed"):
        raise RuntimeError(f"the catalog of {inventory}: {result.get('msg')}")
    return json.loads(result["msg"])


def normalised(inventory: str | os.PathLike = DEFAULT_INVENTORY, extra_vars: str | None = None) -> list[dict]:
    """The normalised catalog: defaults applied, each replica's host, address, port and endpoint."""
    return _evaluate(str(inventory), extra_vars)["models"]


def addresses(inventory: str | os.PathLike = DEFAULT_INVENTORY) -> dict[str, str]:
    """Each host's citadel_address: where the other hosts reach it (replicas, exporters, gateways)."""
    return _evaluate(str(inventory), None)["addresses"]


def _published(hostvars: dict, port: int) -> str | None:
    """The controller-side address of a lab container port (lab_publish "ip:hostport:containerport")."""
    for spec in hostvars.get("lab_publish", []) or []:
        parts = str(spec).split(":")
        if len(parts) == 3 and int(parts[2]) == port:
            return f"http://{parts[0]}:{parts[1]}"
        if len(parts) == 2 and int(parts[1]) == port:
            return f"http://127.0.0.1:{parts[0]}"
    return None


def replica_url(replica: dict, hostvars: dict) -> str:
    """Where a replica answers, seen from this machine: its endpoint, or the lab's published port."""
    return _published(hostvars, replica["port"]) or f"http://{replica['endpoint']}"


def models(inventory: str | os.PathLike = DEFAULT_INVENTORY, extra_vars: str | None = None) -> list[Model]:
    """The catalog, each model with its latency targets and replica URLs."""
    hostvars = load_inventory(str(inventory)).get("_meta", {}).get("hostvars", {})
    return [
        Model(
            name=entry["name"],
            capabilities=tuple(entry["capabilities"]),
            group=entry["group"],
            port=entry["port"],
            avg_ms=float(entry["latency_ms"]["avg"]),
            p95_ms=float(entry["latency_ms"]["p95"]),
            replicas=tuple(replica_url(r, hostvars.get(r["host"], {})) for r in entry["replicas"]),
        )
        for entry in normalised(str(inventory), extra_vars)
    ]


def load(inventory: str | os.PathLike = DEFAULT_INVENTORY, extra_vars: str | None = None) -> list[Model]:
    return models(inventory, extra_vars)
