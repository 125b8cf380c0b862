"""The citadel_packages action (roles/citadel_packages) on the controller, which is Debian like the
hosts: what dpkg reports installed costs no apt run, and a bad argument is a clear error. (The
install path runs for real on every fresh lab host: `make lab` and Molecule's converge.)"""

import json
import sys

import pytest
from conftest import REPO


@pytest.fixture
def packages(ansible, tmp_path):
    def run(args: dict) -> dict:
        playbook = tmp_path / "play.yml"
        task = {"citadel_packages": args, "register": "r", "ignore_errors": True}
        save = {"ansible.builtin.copy": {"content": "{{ r | to_json }}", "dest": str(tmp_path / "r.json")}}
        playbook.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [task, save]}]))
        done = ansible(
            "ansible-playbook", "-i", "localhost,", "-c", "local",
            "-e", f"ansible_python_interpreter={sys.executable}", str(playbook),
            # The action plugin lives in the role; point Ansible at it as a role dependency would.
            env={"ANSIBLE_ACTION_PLUGINS": str(REPO / "roles/citadel_packages/action_plugins")},
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads((tmp_path / "r.json").read_text())

    return run


def test_installed_packages_need_no_apt_run(packages):
    result = packages({"name": ["dpkg", "coreutils"]})
    assert not result.get("failed")
    assert not result["changed"]
    assert result["missing"] == []
    assert "invocation" not in result  # apt never ran


def test_a_name_that_is_not_a_package_name_is_refused(packages):
    result = packages({"name": [""]})
    assert result["failed"]
    assert "name must be a package name" in result["msg"]
