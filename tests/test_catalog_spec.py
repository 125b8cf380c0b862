"""The catalog's argument spec (roles/citadel_catalog/meta/argument_specs.yml) describes the
fields the citadel_catalog filter checks, accepts the real catalogs, and stops a role whose
catalog has a typo or a wrong type before it runs a task."""

import sys

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from conftest import REPO, pinned_catalog
from test_catalog import _model  # the same valid entry the filter's tests start from

sys.path.insert(0, str(REPO / "roles/citadel_catalog/filter_plugins"))

from citadel_catalog import (  # noqa: E402
    EXTERNAL_FIELDS,
    EXTERNAL_REQUIRED,
    FIELDS,
    GATEWAY_NUMBERS,
    REQUIRED,
    RESOURCE_FIELDS,
    ROUTING_POLICIES,
    SOURCE_FIELDS,
)

SPEC = yaml.safe_load((REPO / "roles/citadel_catalog/meta/argument_specs.yml").read_text())
MODELS = SPEC["argument_specs"]["main"]["options"]["citadel_models"]
CATALOGS = {
    "production": pinned_catalog(REPO / "group_vars/all/models.yml"),
    "lab": pinned_catalog(REPO / "inventory/lab/group_vars/lab/models.yml"),
}


def _errors(models) -> list[str]:
    result = ArgumentSpecValidator({"citadel_models": MODELS}).validate({"citadel_models": models})
    return [str(e) for e in result.errors]


def test_the_spec_names_the_fields_the_filter_checks():
    entry = MODELS["options"]
    assert set(entry) == set(FIELDS) | set(EXTERNAL_FIELDS)
    # required by both kinds of entry; the rest: source, group and port or base_url
    assert {k for k, v in entry.items() if v.get("required")} == {"name", *(set(REQUIRED) & set(EXTERNAL_REQUIRED))}
    assert set(REQUIRED) - set(EXTERNAL_REQUIRED) == {"source", "group", "port"}
    assert set(entry["gateway"]["options"]) == {"fallbacks", "cache", "routing", *GATEWAY_NUMBERS}
    assert entry["gateway"]["options"]["routing"]["options"]["policy"]["choices"] == list(ROUTING_POLICIES)
    assert set(entry["source"]["options"]) == set(SOURCE_FIELDS)
    assert set(entry["resources"]["options"]) == set(RESOURCE_FIELDS)
    assert all(v.get("description") for v in entry.values())


@pytest.mark.parametrize("name", CATALOGS)
def test_the_real_catalogs_pass(name):
    assert _errors(CATALOGS[name]) == []


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"prot": 1}, "citadel_models.prot. Supported parameters include"),
        ({"port": "eleven"}, "port"),
        ({"capabilities": ["telepathy"]}, "telepathy"),
        ({"gateway": {"first_byte_timout_s": 30}}, "first_byte_timout_s"),
        ({"latency_ms": {"avg": 1}}, "p95"),
        ({"resources": {"memory": "8G"}}, "memory"),
        ({"base_url": "http://ollama-01:11434/v1"}, "mutually exclusive"),  # served by vLLM or elsewhere
        ({"probe": "ping"}, "probe"),
    ],
)
def test_a_wrong_entry_is_refused(fields, expected):
    errors = _errors([{**_model("chat", 11400), **fields}])
    assert errors
    assert expected in " ".join(errors), errors


def test_a_role_with_a_wrong_catalog_stops_before_its_tasks(ansible, tmp_path):
    play = tmp_path / "play.yml"
    play.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "localhost",
                    "gather_facts": False,
                    "roles": ["citadel_catalog"],
                    "tasks": [{"name": "Never reached", "ansible.builtin.debug": {"msg": "ran"}}],
                }
            ]
        )
    )
    run = ansible("ansible-playbook", "-i", "localhost,", "-c", "local", str(play), "-e",
                  '{"citadel_models": [{"name": "chat", "prot": 1}]}')  # fmt: skip
    text = " ".join(run.stdout.split())
    assert run.returncode != 0
    assert "Validating arguments against arg spec 'main'" in text, text[-2000:]
    assert "citadel_models.prot. Supported parameters include" in text
    assert "Never reached" not in text
