"""The citadel_files module (roles/citadel_files), run for real on the controller against a temp dir:
it must behave like template/file do — write what differs, report exactly what changed, predict under
--check without touching anything, enforce modes, refuse what it cannot do."""

import json
import os
import stat
import sys

import pytest
from conftest import REPO

LIBRARY = str(REPO / "roles/citadel_files/library")


@pytest.fixture
def apply(ansible, tmp_path):
    """Run citadel_files once with these args on localhost; returns the module's result."""

    def run(args: dict, *flags: str) -> dict:
        playbook = tmp_path / "play.yml"
        playbook.write_text(
            json.dumps(
                [
                    {
                        "hosts": "localhost",
                        "gather_facts": False,
                        "tasks": [
                            {"citadel_files": args, "register": "r", "ignore_errors": True},
                            {
                                "ansible.builtin.copy": {
                                    "content": "{{ r | to_json }}",
                                    "dest": str(tmp_path / "r.json"),
                                },
                                "check_mode": False,
                            },
                        ],
                    }
                ]
            )
        )
        done = ansible(
            "ansible-playbook", "-i", "localhost,", "-c", "local", "-M", LIBRARY,
            "-e", f"ansible_python_interpreter={sys.executable}", *flags, str(playbook),
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads((tmp_path / "r.json").read_text())

    return run


def test_writes_once_then_reports_nothing_changed(apply, tmp_path):
    conf = tmp_path / "etc/app/app.conf"
    args = {
        "directories": [{"path": str(conf.parent), "mode": "0750"}],
        "files": [{"dest": str(conf), "content": "a = 1\n", "mode": "0640"}],
    }
    first = apply(args)
    assert first["changed"]
    assert first["changed_paths"] == [str(conf.parent), str(conf)]
    assert conf.read_text() == "a = 1\n"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    assert stat.S_IMODE(conf.parent.stat().st_mode) == 0o750
    second = apply(args)
    assert not second["changed"]
    assert second["changed_paths"] == []


def test_only_what_differs_is_reported_and_drifted_modes_are_restored(apply, tmp_path):
    same, other = tmp_path / "same.conf", tmp_path / "other.conf"
    same.write_text("x\n")
    other.write_text("old\n")
    os.chmod(same, 0o666)
    os.chmod(other, 0o644)
    result = apply({"files": [{"dest": str(same), "content": "x\n", "mode": "0644"},
                              {"dest": str(other), "content": "new\n", "mode": "0644"}]})  # fmt: skip
    assert result["changed_paths"] == [str(same), str(other)]
    assert stat.S_IMODE(same.stat().st_mode) == 0o644
    assert other.read_text() == "new\n"
    unchanged = apply({"files": [{"dest": str(same), "content": "x\n", "mode": "0644"}]})
    assert unchanged["changed_paths"] == []


def test_check_mode_predicts_and_touches_nothing(apply, tmp_path):
    conf = tmp_path / "new/app.conf"
    result = apply(
        {"directories": [{"path": str(conf.parent)}], "files": [{"dest": str(conf), "content": "y\n"}]},
        "--check",
        "--diff",
    )
    assert result["changed"]
    assert result["changed_paths"] == [str(conf.parent), str(conf)]
    assert not conf.parent.exists()
    assert {"before": "", "after": "y\n"}.items() <= result["diff"][1].items()


def test_a_missing_parent_or_a_directory_in_the_way_is_a_clear_error(apply, tmp_path):
    missing = apply({"files": [{"dest": str(tmp_path / "nowhere/app.conf"), "content": "z\n"}]})
    assert missing["failed"]
    assert "list it under directories" in missing["msg"]
    (tmp_path / "dir.conf").mkdir()
    in_the_way = apply({"files": [{"dest": str(tmp_path / "dir.conf"), "content": "z\n"}]})
    assert in_the_way["failed"]
    assert "is not a regular file" in in_the_way["msg"]


def test_an_exclusive_directory_loses_the_files_no_entry_names(apply, tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "gone-model").write_text("old key\n")
    (keys / "kept-model").write_text("key\n")
    (keys / "subdir").mkdir()
    args = {
        "directories": [{"path": str(keys), "exclusive": True}],
        "files": [{"dest": str(keys / "kept-model"), "content": "key\n"}],
    }
    predicted = apply(args, "--check")
    assert predicted["changed_paths"] == [str(keys / "gone-model")]
    assert (keys / "gone-model").exists()
    assert apply(args)["changed_paths"] == [str(keys / "gone-model")]
    assert sorted(p.name for p in keys.iterdir()) == ["kept-model", "subdir"]
    assert apply(args)["changed_paths"] == []
