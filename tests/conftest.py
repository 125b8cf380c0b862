"""Helpers for repository tests that run Ansible on the controller only."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def ansible():
    """Run an ansible CLI from the repository root; returns the CompletedProcess."""

    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1", **(env or {})}
        return subprocess.run(list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    return run
