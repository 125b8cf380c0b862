"""Hosts of a Molecule scenario's inventory, for testinfra's podman backend.

The scenario's inventory (CITADEL_INVENTORY, set per scenario in molecule.yml)
is the only list of lab hosts; tests ask it instead of repeating host names.
"""

import functools
import hashlib
import json
import os
import ssl
import subprocess
from pathlib import Path

import catalog  # loadtests/catalog.py: the catalog through the roles' citadel_catalog filter


@functools.cache
def _inventory() -> dict:
    path = os.environ["CITADEL_INVENTORY"]
    out = subprocess.run(
        ["ansible-inventory", "-i", path, "--list"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def names(group: str = "all") -> list[str]:
    """Inventory names (= container names) of every host in `group`."""
    inv = _inventory()
    found: list[str] = []
    pending = [group]
    while pending:
        entry = inv.get(pending.pop(), {})
        found.extend(h for h in entry.get("hosts", []) if h not in found)
        pending.extend(entry.get("children", []))
    return sorted(found)


def hosts(group: str = "all") -> list[str]:
    """testinfra host specs (podman://NAME) for every host in `group`."""
    return [f"podman://{name}" for name in names(group)]


def hostvars(name: str) -> dict:
    """Inventory variables of one host (templates are not rendered)."""
    return _inventory()["_meta"]["hostvars"].get(name, {})


def models() -> list[dict]:
    """The normalised catalog (defaults applied, each replica's host, address and endpoint)."""
    return catalog.normalised(os.environ["CITADEL_INVENTORY"])


def models_on(name: str) -> list[dict]:
    """Catalog entries that host `name` serves (a replica of theirs is on it)."""
    return [m for m in models() if any(r["host"] == name for r in m["replicas"])]


def replica(name: str, model: dict) -> dict:
    """The replica of `model` on host `name`: host, address, port, endpoint (address:port)."""
    return next(r for r in model["replicas"] if r["host"] == name)


def address(name: str) -> str:
    """Where the other hosts reach host `name` (its citadel_address, as the roles resolve it)."""
    return catalog.addresses(os.environ["CITADEL_INVENTORY"])[name]


def endpoint(name: str, port: int) -> str:
    """address:port of a service on host `name`."""
    found = address(name)
    return f"[{found}]:{port}" if ":" in found else f"{found}:{port}"


def served_models() -> list[tuple[str, dict]]:
    """(host, model) for every model replica in the lab."""
    return [(host, model) for host in names("llm_servers") for model in models_on(host)]


def published_port(name: str, port: int) -> int:
    """The port on this machine's loopback that lab host `name` publishes its `port` on
    (lab_publish "127.0.0.1:HOST:CONTAINER")."""
    for spec in hostvars(name).get("lab_publish", []):
        _, outside, inside = spec.split(":")
        if int(inside) == port:
            return int(outside)
    raise LookupError(f"{name} publishes no port {port} (lab_publish in inventory/lab/hosts.yml)")


def gateway_tls(name: str) -> ssl.SSLContext | None:
    """For gateway `name`: a context trusting only the lab CA (lab/tls.sh) where it serves
    HTTPS (citadel_gateway_tls), else None (plain HTTP)."""
    if not hostvars(name).get("citadel_gateway_tls"):
        return None
    return ssl.create_default_context(cafile=str(_cache() / "lab-tls" / "ca.pem"))


def gateway_url(name: str) -> str:
    """Where this machine reaches gateway `name`: its published port on loopback, https where it serves TLS."""
    return f"{'https' if gateway_tls(name) else 'http'}://127.0.0.1:{published_port(name, 8000)}"


def gateway_metrics_url(name: str) -> str:
    """Gateway `name`'s /metrics: its metrics listener at its lab address (the lab's firewall lets
    this machine read it), https where it serves TLS."""
    port = hostvars(name)["citadel_gateway_metrics_port"]
    return f"{'https' if gateway_tls(name) else 'http'}://{endpoint(name, port)}/metrics"


def _cache() -> Path:
    return Path(os.environ.get("CITADEL_CACHE") or Path(__file__).resolve().parent.parent / ".cache")


def model_api_key(model: str) -> str:
    """The API key model `model`'s vLLM servers require: sha256 of "<seed>:<model>", the seed
    lab/keygen.sh wrote into the cache (as inventory/lab/group_vars/lab/model_keys.yml derives it)."""
    seed = (_cache() / "lab-model-key-seed").read_text().strip()
    return hashlib.sha256(f"{seed}:{model}".encode()).hexdigest()
