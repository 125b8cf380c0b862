"""The gateways restart for a new package without refusing a connection (systemd socket activation
holds the listening socket; the old process drains), one host at a time, under a probe load on
each gateway that counts every request — and every request's usage row reaches PostgreSQL (the
stopping process inserts or journals what it holds, the next one replays the journal)."""

import contextlib
import shutil
import time

import lab_inventory
import lab_ops
from lab_ops import API_KEY, playbook
from probe import Probe

GATEWAYS = lab_inventory.names("llm_gateway")


def test_gateway_package_change_restarts_every_gateway_without_refusing_under_load(tmp_path):
    """A new gateway package (here: the same source with one README byte changed) reinstalls and
    restarts each gateway in turn; systemd holds each listening socket meanwhile, so not one
    probe request is refused or cut. The restarts are real: each unit's start time moves twice
    (the change, then the repository's package again)."""
    hosts = {name: lab_ops.host(name) for name in GATEWAYS}
    src = tmp_path / "gateway"
    shutil.copytree(
        lab_ops.REPO / "files/gateway", src, ignore=shutil.ignore_patterns("tests", "__pycache__", "*.egg-info")
    )
    (src / "README.md").write_text((src / "README.md").read_text() + "\n")

    def starts() -> dict[str, int]:
        return {name: lab_ops.started(h, "citadel-gateway.service") for name, h in hosts.items()}

    before = starts()
    with contextlib.ExitStack() as stack:
        probes = [
            stack.enter_context(
                Probe(
                    API_KEY,
                    port=lab_inventory.published_port(name, 8000),
                    workers=2,
                    tls=lab_inventory.gateway_tls(name),
                )
            )
            for name in GATEWAYS
        ]
        time.sleep(3)
        t0 = time.monotonic()
        try:
            playbook("playbooks/gateway.yml", "--tags", "llm_gateway", "-e", f"llm_gateway_src={src}")
            changed = starts()
        finally:
            playbook("playbooks/gateway.yml", "--tags", "llm_gateway")  # the repository's package again
        took = time.monotonic() - t0
        time.sleep(3)
    after = starts()
    print(f"two gateway package changes on {len(GATEWAYS)} gateways in {took:.0f} s")
    for name, p in zip(GATEWAYS, probes, strict=True):
        print(f"  probe on {name}: {p.report}")
    for name in GATEWAYS:
        assert before[name] < changed[name] < after[name], f"{name} did not restart twice"
    for name, p in zip(GATEWAYS, probes, strict=True):
        assert p.report.clean(), f"{name}: {p.report}"
    for name, p in zip(GATEWAYS, probes, strict=True):
        ids = [r["request_id"] for r in lab_ops.usage_rows(p.prefix, len(p.report.ids))]
        assert sorted(ids) == sorted(p.report.ids), f"{name}: usage rows lost or doubled across two restarts"
