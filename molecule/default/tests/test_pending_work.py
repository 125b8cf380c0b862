"""Work a change made due survives a run that failed before doing it.

The roles leave a mark for each restart (vLLM), install, restart or reload
(gateway) until it happened. A mark left behind, as a run that failed half-way
leaves it, is done by the next run, even one with only the service tag.
"""

import os
import subprocess
from pathlib import Path

import lab_inventory
import testinfra

REPO = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])


def run(tags: str, limit: str) -> None:
    done = subprocess.run(
        ["ansible-playbook", "-i", "inventory/lab", "site.yml", "--tags", tags, "--limit", limit],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def started(host, unit: str) -> int:
    return int(host.run(f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}").stdout)


def test_a_restart_left_due_happens_on_the_next_run():
    name, model = lab_inventory.served_models()[0]
    host = testinfra.get_host(f"podman://{name}")
    unit = f"vllm-{model['name']}.service"
    mark = f"/var/lib/citadel/vllm/restart-pending/{model['name']}"
    before = started(host, unit)
    host.run(f"touch {mark}")

    run("vllm_service", name)

    assert started(host, unit) > before, f"{unit} on {name} was not restarted"
    assert not host.file(mark).exists, "the mark stays after a successful restart"


def test_an_interrupted_gateway_install_is_redone():
    name = lab_inventory.names("llm_gateway")[0]
    host = testinfra.get_host(f"podman://{name}")
    package = "/opt/citadel/gateway/venv/lib/python3.11/site-packages/citadel_gateway/__init__.py"
    # As an install that died after the source shipped: the mark is there, the package is not.
    host.run("touch /var/lib/citadel/gateway/install-pending")
    host.run(f"rm -f {package}")
    before = started(host, "citadel-gateway.service")

    run("llm_gateway", name)

    assert host.file(package).exists, "the package was not installed again"
    assert started(host, "citadel-gateway.service") > before, "the gateway was not restarted on the new install"
    assert not host.file("/var/lib/citadel/gateway/install-pending").exists
    assert not host.file("/var/lib/citadel/gateway/restart-pending").exists
