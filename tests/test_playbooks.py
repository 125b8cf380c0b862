"""site.yml parses against production; preflight stops bad input with the fix named."""

import json

import pytest


def test_site_syntax_against_production(ansible):
    out = ansible("ansible-playbook", "-i", "inventory/production", "site.yml", "--syntax-check")
    assert out.returncode == 0, out.stdout + out.stderr


def _preflight(ansible, *extra: str):
    return ansible("ansible-playbook", "-i", "tests/inventory/preflight.yml", "playbooks/preflight.yml", *extra)


def test_preflight_passes_with_defaults(ansible):
    out = _preflight(ansible)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "changed=0" in out.stdout


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {"host_tuning_thp_mode": "sometimes"},
            ["host_tuning_thp_mode", "never, madvise, always", "sometimes"],
        ),
        (
            {"host_tuning_nr_hugepages": 10_000_000},
            ["host_tuning_nr_hugepages=10000000", "Set host_tuning_nr_hugepages to at most"],
        ),
        (
            {"host_tuning_io_scheduler": "cfq"},
            ["host_tuning_io_scheduler", "mq-deadline", "cfq"],
        ),
        (
            {"host_tuning_sysctl_host_parameters": {"vm.swappiness": {"nested": 1}}},
            ["vm.swappiness", "host_tuning_sysctl_host_parameters"],
        ),
    ],
)
def test_preflight_rejects_bad_input(ansible, extra, expected):
    out = _preflight(ansible, "-e", json.dumps(extra))
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode != 0
    assert "changed=0" in out.stdout
    assert "failed=1" in out.stdout
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in preflight output:\n{out.stdout[-2000:]}"
