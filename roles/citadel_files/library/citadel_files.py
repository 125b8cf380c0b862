#!/usr/bin/python
"""Write a set of directories and files on a host in one module run.

Why not ansible.builtin.template/copy per file: each of those costs two remote
module runs even when nothing changes (a stat, then the file module for owner
and mode), about 0.6 s per file and host on the lab machine; a role writing
nine files paid ~5 s per host on every idempotent run. This module compares and
writes them all in one run, with the same guarantees: atomic replacement,
owner/group/mode enforced, --check predicts, --diff shows content changes.
Contents are rendered on the controller (the `template` lookup).
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: citadel_files
short_description: Ensure several directories and files (content, owner, group, mode) in one run
description:
  - Directories are created (with parents) before files are written.
  - A file is replaced atomically only when its content differs.
  - Owner, group and mode are enforced like M(ansible.builtin.file).
options:
  directories:
    description:
      - Directories to ensure, each C(path) with optional C(owner), C(group), C(mode).
      - With C(exclusive=true), files in the directory that no O(files) entry names are removed
        (e.g. the key of a model no longer in the catalog).
    type: list
    elements: dict
    default: []
  files:
    description:
      - Files to ensure, each C(dest) and C(content) with optional C(owner), C(group), C(mode).
      - The parent directory must exist (or be listed in O(directories)).
    type: list
    elements: dict
    default: []
"""

RETURN = r"""
changed_paths:
  description: The directories and files that were (or, under --check, would be) created or changed.
  type: list
  elements: str
  returned: always
"""

_ENTRY = {"owner": {"type": "str"}, "group": {"type": "str"}, "mode": {"type": "raw"}}


def _attributes(module, path, entry):
    return module.load_file_common_arguments({"path": path, **{k: entry.get(k) for k in _ENTRY}})


def _ensure_directory(module, entry, diffs):
    path = entry["path"]
    changed = False
    if not os.path.isdir(path):
        if os.path.lexists(path):
            module.fail_json(msg=f"{path} exists and is not a directory")
        diffs.append({"before_header": path, "after_header": path, "before": "absent\n", "after": "directory\n"})
        if not module.check_mode:
            os.makedirs(path, exist_ok=True)
        changed = True
    if os.path.isdir(path):
        changed = module.set_fs_attributes_if_different(_attributes(module, path, entry), changed)
    return changed


def _ensure_file(module, entry, diffs):
    dest = entry["dest"]
    content = entry["content"].encode()
    parent = os.path.dirname(dest) or "."
    if not os.path.isdir(parent) and not module.check_mode:
        module.fail_json(msg=f"{dest}: directory {parent} does not exist; list it under directories")
    before = None
    if os.path.lexists(dest):
        if not os.path.isfile(dest) or os.path.islink(dest):
            module.fail_json(msg=f"{dest} exists and is not a regular file")
        with open(dest, "rb") as f:
            before = f.read()
    changed = before != content
    if changed:
        diffs.append(
            {
                "before_header": dest,
                "after_header": dest,
                "before": "" if before is None else before.decode(errors="replace"),
                "after": entry["content"],
            }
        )
        if not module.check_mode:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(dest)}.")
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            module.atomic_move(tmp, dest, unsafe_writes=False)
    if os.path.exists(dest):
        changed = module.set_fs_attributes_if_different(_attributes(module, dest, entry), changed)
    return changed


def _remove_unlisted(module, entry, listed, diffs):
    """Files directly in an exclusive directory that no entry names are removed."""
    path = entry["path"]
    if not os.path.isdir(path):
        return []
    removed = []
    for name in sorted(os.listdir(path)):
        stray = os.path.join(path, name)
        if stray in listed or os.path.isdir(stray) and not os.path.islink(stray):
            continue
        diffs.append({"before_header": stray, "after_header": stray, "before": "present\n", "after": "absent\n"})
        if not module.check_mode:
            os.unlink(stray)
        removed.append(stray)
    return removed


def main():
    module = AnsibleModule(
        argument_spec={
            "directories": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "path": {"type": "path", "required": True},
                    "exclusive": {"type": "bool", "default": False},
                    **_ENTRY,
                },
            },
            "files": {
                "type": "list",
                "elements": "dict",
                "default": [],
                # A task writing a secret sets no_log itself (it hides the diff too).
                "options": {
                    "dest": {"type": "path", "required": True},
                    "content": {"type": "str", "required": True},
                    **_ENTRY,
                },
            },
        },
        supports_check_mode=True,
    )
    diffs = []
    changed_paths = []
    for entry in module.params["directories"]:
        if _ensure_directory(module, entry, diffs):
            changed_paths.append(entry["path"])
    for entry in module.params["files"]:
        if _ensure_file(module, entry, diffs):
            changed_paths.append(entry["dest"])
    listed = {entry["dest"] for entry in module.params["files"]}
    for entry in module.params["directories"]:
        if entry["exclusive"]:
            changed_paths += _remove_unlisted(module, entry, listed, diffs)
    module.exit_json(changed=bool(changed_paths), changed_paths=changed_paths, diff=diffs)


if __name__ == "__main__":
    main()
