"""Shared by every scenario's testinfra tests (molecule/<scenario>/tests)."""

import json
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def host_kernel_before() -> dict:
    """This machine's own vm.* values, recorded by create.yml before any role ran."""
    snapshot = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "host-sysctl-before.json"
    return json.loads(snapshot.read_text())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failing test, print the lab host's failed units and journal tail."""
    outcome = yield
    report = outcome.get_result()
    host = item.funcargs.get("host") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and host is not None:
        failed = host.run("systemctl --failed --no-legend --plain").stdout
        journal = host.run("journalctl --no-pager -n 40 -p warning").stdout
        report.sections.append(("lab host state", f"failed units:\n{failed}\njournal:\n{journal}"))
