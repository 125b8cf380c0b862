"""Every `--tags` the READMEs document runs alone against the converged lab.

Each role README ends its layout section with a `Tags:` line; the top README
shows `--tags ... --limit ...` examples for production. A tag run alone gets no
facts from the parts of the run it skips, so each one must load what it needs
itself. On a converged lab each run must also change nothing.
"""

import os
import re
import subprocess
from pathlib import Path

import lab_inventory
import pytest

REPO = Path(os.environ["MOLECULE_PROJECT_DIRECTORY"])


def documented_tags() -> list[str]:
    tags = []
    for readme in sorted(REPO.glob("roles/*/README.md")):
        m = re.search(r"^Tags: (.*?\.)$", readme.read_text(), re.M | re.S)
        if m:
            tags += re.findall(r"`([a-z_]+)`", m.group(1))
    return tags


def readme_examples() -> list[tuple[str, str | None]]:
    """(tags, limit) of each `ansible-playbook ... --tags` line of the top README."""
    found = []
    for line in (REPO / "README.md").read_text().splitlines():
        if "ansible-playbook" in line and "--tags" in line:
            tags = re.search(r"--tags (\S+)", line).group(1)
            limit = re.search(r"--limit (\S+)", line)
            found.append((tags, limit.group(1) if limit else None))
    return found


def run(tags: str, limit: str | None = None) -> str:
    args = ["ansible-playbook", "-i", "inventory/lab", "site.yml", "--tags", tags]
    if limit:
        args += ["--limit", limit]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"--tags {tags} failed:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
    return done.stdout


def changed_hosts(out: str) -> dict[str, int]:
    return {h: int(n) for h, n in re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", out, re.M) if int(n)}


def test_the_readmes_document_tags():
    tags = documented_tags()
    assert {"host_tuning", "vllm_service", "llm_gateway_service", "prometheus_configure"} <= set(tags), tags
    assert readme_examples(), "the README shows no --tags example"


@pytest.mark.parametrize("tag", documented_tags())
def test_documented_tag_runs_alone(tag):
    out = run(tag)
    assert "TASK [" in out, f"--tags {tag} ran no task"
    assert changed_hosts(out) == {}, f"--tags {tag} changed a converged lab:\n{out[-3000:]}"


@pytest.mark.parametrize(("tags", "limit"), readme_examples())
def test_readme_example_runs_on_the_lab(tags, limit):
    # The README's examples name production hosts: run them on the lab host of the same group.
    lab_limit = None
    if limit:
        group = "llm_servers" if "llm" in limit else "all"
        lab_limit = lab_inventory.names(group)[0]
    assert changed_hosts(run(tags, lab_limit)) == {}
