"""Checks on this machine itself, imported into every scenario's tests."""

from pathlib import Path


def test_machine_kernel_untouched(host_kernel_before):
    # The lab must never change the CI machine's own (non-namespaced) settings.
    for key, before in host_kernel_before.items():
        now = Path("/proc/sys", *key.split(".")).read_text().strip()
        assert now == before, f"{key} on this machine changed from {before} to {now}"
