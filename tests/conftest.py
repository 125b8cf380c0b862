"""Helpers for repository tests that run Ansible on the controller only."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
# A placeholder commit for hub sources in test catalogs (nothing downloads it).
REVISION = "0123456789abcdef0123456789abcdef01234567"


def pinned_catalog(path: Path) -> list[dict]:
    """The citadel_models of a vars file, each hub source without a revision given REVISION.
    Production's catalog leaves the revisions for the operator to pin, and the catalog
    filter (like preflight) refuses it unpinned."""
    models = yaml.safe_load(path.read_text())["citadel_models"]
    for m in models:
        if "hf_repo" in m.get("source", {}) and m["source"].get("revision") is None:
            m["source"]["revision"] = REVISION
    return models


@pytest.fixture
def ansible():
    """Run an ansible CLI from the repository root; returns the CompletedProcess."""

    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1", **(env or {})}
        return subprocess.run(list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    return run
